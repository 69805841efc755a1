"""Attention mechanisms, chosen by name through one registry."""

# Importing a mechanism's module registers it.
from attention_jax.attention import dot_product  # noqa: F401
from attention_jax.attention.registry import get
from attention_jax.attention.registry import names
