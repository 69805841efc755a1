"""Multi-head scaled dot-product attention (Vaswani et al., 2017)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax.attention import masks
from attention_jax.attention import registry
from attention_jax.model.config import TransformerConfig


def scaled_dot_product(query_BxQxHxD, key_BxKxHxD, value_BxKxHxD, mask,
                       dropout=None):
  """softmax(q k^T / sqrt(d)) v with a boolean mask broadcastable to BxHxQxK.

  Args:
    query_BxQxHxD: queries.
    key_BxKxHxD: keys.
    value_BxKxHxD: values.
    mask: True where a query may attend to a key.
    dropout: optional callable applied to the attention probabilities.

  Returns:
    The attended values, [B, Q, H, D].
  """
  depth = query_BxQxHxD.shape[-1]
  logits_BxHxQxK = jnp.einsum(
      'bqhd,bkhd->bhqk', query_BxQxHxD, key_BxKxHxD
  ) / jnp.sqrt(depth).astype(query_BxQxHxD.dtype)
  # Softmax in float32 keeps bfloat16 training stable.
  logits_BxHxQxK = logits_BxHxQxK.astype(jnp.float32)
  logits_BxHxQxK = jnp.where(
      mask, logits_BxHxQxK, jnp.finfo(jnp.float32).min
  )
  probs_BxHxQxK = jax.nn.softmax(logits_BxHxQxK).astype(value_BxKxHxD.dtype)
  if dropout is not None:
    probs_BxHxQxK = dropout(probs_BxHxQxK)
  return jnp.einsum('bhqk,bkhd->bqhd', probs_BxHxQxK, value_BxKxHxD)


@registry.register('dot_product')
class DotProductAttention(nn.Module):
  """Multi-head softmax attention; its decoding state is keys and values.

  Parameter names and shapes match `flax.linen.MultiHeadDotProductAttention`.
  """

  cfg: TransformerConfig
  causal: bool = False

  @nn.compact
  def __call__(self, inputs_q, inputs_kv, q_segment_ids, kv_segment_ids):
    cfg = self.cfg
    project = functools.partial(
        nn.DenseGeneral,
        features=(cfg.num_heads, cfg.head_dim),
        dtype=cfg.dtype,
        kernel_init=nn.initializers.xavier_uniform(),
    )
    query = project(name='query')(inputs_q)

    if cfg.decode and not self.causal:
      key, value = self._cached_memory(project, inputs_kv)
      mask = masks.key_padding_mask(kv_segment_ids)
    else:
      key = project(name='key')(inputs_kv)
      value = project(name='value')(inputs_kv)
      if cfg.decode:
        key, value, mask = self._append_to_cache(key, value)
      else:
        mask = masks.segment_mask(q_segment_ids, kv_segment_ids)
        if self.causal:
          mask &= masks.causal_mask(query.shape[1], key.shape[1])

    dropout = None
    if not cfg.deterministic and cfg.attention_dropout_rate > 0:
      dropout = functools.partial(
          nn.Dropout(cfg.attention_dropout_rate), deterministic=False
      )
    out_BxQxHxD = scaled_dot_product(query, key, value, mask, dropout)
    return nn.DenseGeneral(
        features=inputs_q.shape[-1],
        axis=(-2, -1),
        dtype=cfg.dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        name='out',
    )(out_BxQxHxD)

  def _cached_memory(self, project, inputs_kv):
    """Projects the encoder memory once, on the cache-creating call."""
    if self.has_variable('cache', 'memory_key'):
      key = self.get_variable('cache', 'memory_key')
      value = self.get_variable('cache', 'memory_value')
    else:
      key = project(name='key')(inputs_kv)
      value = project(name='value')(inputs_kv)
      self.put_variable('cache', 'memory_key', key)
      self.put_variable('cache', 'memory_value', value)
    return key, value

  def _append_to_cache(self, key_step, value_step):
    """Writes this step's key/value at the cache index; masks future slots."""
    is_initialized = self.has_variable('cache', 'cached_key')
    cached_key = self.variable(
        'cache', 'cached_key', jnp.zeros, key_step.shape, key_step.dtype
    )
    cached_value = self.variable(
        'cache', 'cached_value', jnp.zeros, value_step.shape, value_step.dtype
    )
    cache_index = self.variable(
        'cache', 'cache_index', lambda: jnp.array(0, jnp.int32)
    )
    max_len = cached_key.value.shape[1]
    if not is_initialized:
      # The creating call sees the full decode length; its output is unused.
      return key_step, value_step, masks.causal_mask(max_len, max_len)
    if key_step.shape[1] != 1:
      raise ValueError(
          'Incremental decoding consumes one token per call, got '
          f'{key_step.shape[1]}.'
      )
    index = cache_index.value
    cached_key.value = jax.lax.dynamic_update_slice(
        cached_key.value, key_step, (0, index, 0, 0)
    )
    cached_value.value = jax.lax.dynamic_update_slice(
        cached_value.value, value_step, (0, index, 0, 0)
    )
    cache_index.value = index + 1
    mask = (jnp.arange(max_len) <= index)[None, None, None, :]
    return cached_key.value, cached_value.value, mask
