"""The projections in and out of heads that attention mechanisms share.

Called from inside a mechanism's compact `__call__`, so the layers become its
submodules under `name` ('query', 'key', 'value', 'out'), the layout of
`flax.linen.MultiHeadDotProductAttention`.
"""

import flax.linen as nn

from attention_jax.model import partitioning as part
from attention_jax.model.config import TransformerConfig


def to_heads(cfg: TransformerConfig, name: str, num_heads: int, inputs_BxLxE):
  """Projects [B, L, E] to [B, L, num_heads, head_dim]."""
  return nn.DenseGeneral(
      features=(num_heads, cfg.head_dim),
      dtype=cfg.dtype,
      kernel_init=part.init(
          nn.initializers.xavier_uniform(), part.EMBED, part.HEADS,
          part.HEAD_DIM,
      ),
      bias_init=part.init(nn.initializers.zeros, part.HEADS, part.HEAD_DIM),
      name=name,
  )(inputs_BxLxE)


def from_heads(cfg: TransformerConfig, heads_BxLxHxD, width: int):
  """Projects [B, L, H, D] back to [B, L, width], as layer 'out'."""
  return nn.DenseGeneral(
      features=width,
      axis=(-2, -1),
      dtype=cfg.dtype,
      kernel_init=part.init(
          nn.initializers.xavier_uniform(), part.HEADS, part.HEAD_DIM,
          part.EMBED,
      ),
      bias_init=part.init(nn.initializers.zeros, part.EMBED),
      name='out',
  )(heads_BxLxHxD)
