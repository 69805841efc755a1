"""attention_jax: attention mechanisms for neural machine translation in JAX."""
