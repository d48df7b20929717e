"""ssl_jax.interop."""
