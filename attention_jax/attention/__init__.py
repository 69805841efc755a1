"""Attention mechanisms, chosen by name through one registry."""

# Importing a mechanism's module registers it.
from attention_jax.attention import additive  # noqa: F401
from attention_jax.attention import bilinear  # noqa: F401
from attention_jax.attention import chunked  # noqa: F401
from attention_jax.attention import cosine  # noqa: F401
from attention_jax.attention import dot_product  # noqa: F401
from attention_jax.attention import linear  # noqa: F401
from attention_jax.attention import local  # noqa: F401
from attention_jax.attention import no_attention  # noqa: F401
from attention_jax.attention import performer  # noqa: F401
from attention_jax.attention.registry import get
from attention_jax.attention.registry import names
