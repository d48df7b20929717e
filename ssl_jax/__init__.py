"""ssl_jax: self-supervised pretraining for BERT, T5, BART and GPT in JAX/Flax."""
