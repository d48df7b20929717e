"""ssl_jax.finetune."""
