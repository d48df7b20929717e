"""ssl_jax.data."""
