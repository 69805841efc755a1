"""Cosine-similarity attention scores with a learned temperature."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attention_jax.attention import registry
from attention_jax.attention.dot_product import DotProductAttention
from attention_jax.model import partitioning as part

# Swin Transformer V2 (Liu et al., 2022) starts the temperature at 10 and
# caps it at 100; the cap keeps a growing temperature from saturating the
# softmax.
_INITIAL_TEMPERATURE = 10.0
_MAX_TEMPERATURE = 100.0


def _l2_normalize(x, eps=1e-6):
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


@registry.register('cosine')
class CosineAttention(DotProductAttention):
  """Scores cos(q_h, k_h) * t_h with a learned temperature t_h per head.

  Cosines lie in [-1, 1], so a fixed scale would keep attention nearly
  uniform; t_h sets how sharp each head can be. It is stored as log t_h
  (initialised to log 10) so it stays positive, and clipped at 100.
  """

  def _scores(self, query_BxQxHxD, key_BxKxHxD):
    num_heads = query_BxQxHxD.shape[2]
    log_temperature_H = self.param(
        'log_temperature',
        part.init(
            nn.initializers.constant(np.log(_INITIAL_TEMPERATURE)), part.HEADS
        ),
        (num_heads,),
        jnp.float32,
    )
    temperature_H = jnp.exp(
        jnp.minimum(log_temperature_H, np.log(_MAX_TEMPERATURE))
    )
    cosine_BxHxQxK = jnp.einsum(
        'bqhd,bkhd->bhqk',
        _l2_normalize(query_BxQxHxD),
        _l2_normalize(key_BxKxHxD),
    )
    return cosine_BxHxQxK * temperature_H[:, None, None]
