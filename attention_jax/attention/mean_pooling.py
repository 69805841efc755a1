"""Control without attention: every query gets the mean of its source.

Each query receives the mean of the projected values of its own segment's
tokens, so all queries of a sentence get the same vector whatever they are:
attention whose weights are uniform over the visible keys. Used as
cross-attention, it measures how much of the translation quality comes from
attending at all rather than from a sentence summary. A mean needs the whole
sequence, so it cannot be causal.
"""

import jax.numpy as jnp

from attention_jax.attention import base
from attention_jax.attention import registry


def _masked_mean(weights_BxQxK, value_BxKxHxD):
  weights_BxQxK = weights_BxQxK.astype(jnp.float32)
  # A query with no visible key (padding) gets the mean of nothing: 0.
  counts_BxQx1 = jnp.maximum(weights_BxQxK.sum(-1, keepdims=True), 1.0)
  return jnp.einsum('bqk,bkhd->bqhd', weights_BxQxK / counts_BxQx1,
                    value_BxKxHxD.astype(jnp.float32))


@registry.register('mean_pooling')
class MeanPooling(base.Mechanism):
  """Masked mean of the values; ignores the queries (and their projection).

  Its 'value' projection has G = num_kv_heads heads, repeated to the H heads
  of 'out'. Decoding (cross-attention only) keeps 'summary' [B, 1, H, D],
  the mean of the real memory tokens' values (a decoded row holds one
  sentence).
  """

  capabilities = base.Capabilities(
      causal=False,
      decoding_state=base.DecodingState.NONE,
      score_bias=False,
      position_schemes=frozenset(),
      attention_weights=False,
      inspectable_weights=False,
      projections=('value',),
  )

  def attend(self, module, inputs):
    del module
    value = base.repeat_kv_heads(inputs.value_BxKxGxD, inputs.num_heads)
    return _masked_mean(inputs.mask.dense()[:, 0], value)

  def reference(self, params, inputs, path=()):
    del params, path
    visible = base.reference_mask(inputs)[:, 0].astype(jnp.float32)
    value = base.repeat_kv_heads(inputs.value_BxKxGxD, inputs.num_heads)
    total = jnp.einsum('bqk,bkhd->bqhd', visible, value.astype(jnp.float32))
    return total / jnp.maximum(visible.sum(-1), 1.0)[..., None, None]

  def summarise(self, module, key_BxKxGxD, value_BxKxGxD, kv_segment_ids_BxK,
                num_heads, key_extras):
    del module, key_BxKxGxD, key_extras
    real_Bx1xK = (kv_segment_ids_BxK != 0)[:, None, :]
    value = base.repeat_kv_heads(value_BxKxGxD, num_heads)
    return {'summary': _masked_mean(real_Bx1xK, value)}

  def read(self, module, summary, query_BxQxHxD):
    del module, query_BxQxHxD
    return summary['summary']
