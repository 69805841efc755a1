"""Control without attention: every query gets one summary of its source.

Each query receives the mean of the memory tokens of its own segment,
projected, so all queries of a sentence get the same vector whatever they
are. Used as cross-attention, it measures how much of the translation
quality comes from attending at all rather than from a sentence summary.
"""

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from attention_jax.attention import masks
from attention_jax.attention import projections
from attention_jax.attention import registry
from attention_jax.model.config import TransformerConfig


@registry.register('no_attention')
class NoAttention(nn.Module):
  """Projected masked mean of the memory; ignores the query content.

  Its 'value' (to (num_heads, head_dim)) and 'out' projections have
  dot_product's shapes, so it is attention whose weights are uniform over the
  source sentence. Pooling uses a [B, Q, K] segment mask, without the head and
  depth factors of attention scores. A mean needs the whole sequence, so it
  cannot be causal.

  Decoding caches 'memory_summary' [B, E], the output for a row, computed on
  the creating call from the real memory tokens (a decoded row holds one
  sentence).
  """

  # Capabilities checked when a config is built (see masks.py).
  can_be_causal: ClassVar[bool] = False
  forms_scores: ClassVar[bool] = False

  cfg: TransformerConfig
  causal: bool = False

  @nn.compact
  def __call__(self, inputs_q, inputs_kv, q_segment_ids, kv_segment_ids,
               q_positions=None, kv_positions=None):
    del q_positions, kv_positions
    if self.causal:
      raise ValueError(
          'no_attention cannot be causal: it pools the whole memory.'
      )
    if self.cfg.decode:
      summary_BxE = self._cached_summary(inputs_q, inputs_kv, kv_segment_ids)
      return jnp.broadcast_to(summary_BxE[:, None], inputs_q.shape)
    weights_BxQxK = masks.segment_mask(q_segment_ids, kv_segment_ids)[:, 0]
    return self._summarise(weights_BxQxK, inputs_kv, inputs_q.shape[-1])

  def _summarise(self, weights_BxQxK, inputs_kv, width: int):
    """Projected mean of the memory tokens with a True weight, [B, Q, width]."""
    weights_BxQxK = weights_BxQxK.astype(jnp.float32)
    # A query with no memory token (padding) gets the mean of nothing: 0.
    counts_BxQx1 = jnp.maximum(weights_BxQxK.sum(-1, keepdims=True), 1.0)
    mean_BxQxE = jnp.einsum(
        'bqk,bke->bqe', weights_BxQxK / counts_BxQx1,
        inputs_kv.astype(jnp.float32),
    ).astype(self.cfg.dtype)
    value_BxQxHxD = projections.to_heads(
        self.cfg, 'value', self.cfg.num_heads, mean_BxQxE
    )
    return projections.from_heads(self.cfg, value_BxQxHxD, width)

  def _cached_summary(self, inputs_q, inputs_kv, kv_segment_ids):
    """The row's output, computed once on the cache-creating call."""
    if self.has_variable('cache', 'memory_summary'):
      return self.get_variable('cache', 'memory_summary')
    real_Bx1xK = (kv_segment_ids != 0)[:, None, :]
    summary_BxE = self._summarise(
        real_Bx1xK, inputs_kv, inputs_q.shape[-1]
    )[:, 0]
    self.put_variable('cache', 'memory_summary', summary_BxE)
    return summary_BxE
