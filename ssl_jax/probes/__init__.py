"""ssl_jax.probes."""
