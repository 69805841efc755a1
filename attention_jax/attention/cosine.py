"""Cosine-similarity attention scores with a learned temperature."""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from attention_jax import partitioning as part
from attention_jax.attention import head_norms
from attention_jax.attention import registry
from attention_jax.attention import softmax


@dataclasses.dataclass(frozen=True)
class CosineOptions:
  # Swin Transformer V2 (Liu et al., 2022) starts the temperature at 10 and
  # caps it at 100; the cap keeps a growing temperature from saturating the
  # softmax.
  initial_temperature: float = 10.0
  max_temperature: float = 100.0

  def __post_init__(self):
    if not 0 < self.initial_temperature <= self.max_temperature:
      raise ValueError(
          f'initial_temperature={self.initial_temperature} must be positive '
          f'and at most max_temperature={self.max_temperature}.'
      )


@registry.register('cosine')
class Cosine(softmax.Softmax):
  """Scores cos(q_h, k_h) * t_h with a learned temperature t_h per head.

  Cosines lie in [-1, 1], so a fixed scale would keep attention nearly
  uniform; t_h sets how sharp each head can be. It is stored as log t_h
  ('log_temperature', [H]) so it stays positive, and clipped at the maximum.
  """

  Options = CosineOptions
  # The model's qk_norm would be undone by the cosine's own normalisation.
  capabilities = dataclasses.replace(softmax.FAMILY_CAPABILITIES,
                                     qk_norm=False)

  def scores(self, module, query_BxQxHxD, key_BxKxHxD):
    num_heads = query_BxQxHxD.shape[2]
    log_temperature_H = module.param(
        'log_temperature',
        part.init(
            nn.initializers.constant(
                np.log(self.options.initial_temperature)), part.HEADS
        ),
        (num_heads,),
        jnp.float32,
    )
    temperature_H = jnp.exp(
        jnp.minimum(log_temperature_H, np.log(self.options.max_temperature))
    )
    cosine_BxHxQxK = jnp.einsum(
        'bqhd,bkhd->bhqk',
        head_norms.l2_normalise(query_BxQxHxD),
        head_norms.l2_normalise(key_BxKxHxD),
    )
    return cosine_BxHxQxK * temperature_H[None, :, None, None]

  def reference_scores(self, params, query_BxQxHxD, key_BxKxHxD):
    dot = jnp.sum(query_BxQxHxD[:, :, None] * key_BxKxHxD[:, None], -1)
    norms = (jnp.linalg.norm(query_BxQxHxD, axis=-1)[:, :, None]
             * jnp.linalg.norm(key_BxKxHxD, axis=-1)[:, None])
    temperature = jnp.minimum(jnp.exp(params['log_temperature']),
                              self.options.max_temperature)
    return jnp.transpose(dot / norms * temperature[None, None, None],
                         (0, 3, 1, 2))
