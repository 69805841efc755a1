"""Softmax attention over query-key scores; scaled dot product by default.

`DotProductAttention` (Vaswani et al., 2017) is also the base class of every
mechanism that takes a softmax over query-key scores. The base owns what they
share: the projections, grouped key/value heads, the decoding cache of keys
and values, the projected cross-attention memory, padding/segment/causal
masks and the position schemes that act inside self-attention. A subclass
overrides one of these hooks:

  _scores(query_BxQxHxD, key_BxKxHxD) -> logits_BxHxQxK
      What a score is (additive, bilinear, cosine...). It may create
      parameters with `self.param`; it is called once per forward pass from
      the default `_attend`, so it must not be called inside a JAX transform
      (scan, map) unless it creates no parameters.
  _attend(query_BxQxHxD, key_BxKxGxD, value_BxKxGxD, mask, bias, dropout)
      -> out_BxQxHxD
      How the same softmax attention is computed (chunked, fused kernels).
      Keys and values come with G = num_kv_heads heads; `repeat_kv_heads`
      expands them when a computation wants one key head per query head.
  _extra_mask(q_positions_BxQ, kv_positions_BxK) -> mask or None
      Further restricts which keys a query may see in self-attention (a
      local window, say). Positions are as described in `_self_attention`.

Grouped-query attention (Ainslie et al., 2023) is not a separate entry:
`cfg.num_kv_heads` sets the key/value heads of every mechanism built on this
base (1 is multi-query attention), both in the projections and in the
decoding cache, because sharing key/value heads is independent of how scores
are formed. With `num_kv_heads` equal to `num_heads` (or 0) this is plain
multi-head attention.
"""

import functools
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax.attention import kernels
from attention_jax.attention import masks
from attention_jax.attention import positions
from attention_jax.attention import projections
from attention_jax.attention import registry
from attention_jax.model.config import TransformerConfig


def dot_product_scores(query_BxQxHxD, key_BxKxHxD):
  """Scaled dot-product logits q k^T / sqrt(d), [B, H, Q, K]."""
  depth = query_BxQxHxD.shape[-1]
  return jnp.einsum(
      'bqhd,bkhd->bhqk', query_BxQxHxD, key_BxKxHxD
  ) / jnp.sqrt(depth).astype(query_BxQxHxD.dtype)


def softmax_weighted_sum(logits_BxHxQxK, value_BxKxHxD, mask, dropout=None):
  """Masked softmax over keys (in float32), then the weighted sum of values.

  Args:
    logits_BxHxQxK: scores, any float dtype.
    value_BxKxHxD: values.
    mask: boolean, broadcastable to the logits; True where a query may attend
      to a key.
    dropout: optional callable applied to the attention probabilities.

  Returns:
    The attended values, [B, Q, H, D], in the dtype of the values.
  """
  # Softmax in float32 keeps bfloat16 training stable.
  logits_BxHxQxK = jnp.where(
      mask, logits_BxHxQxK.astype(jnp.float32), jnp.finfo(jnp.float32).min
  )
  probs_BxHxQxK = jax.nn.softmax(logits_BxHxQxK).astype(value_BxKxHxD.dtype)
  if dropout is not None:
    probs_BxHxQxK = dropout(probs_BxHxQxK)
  return jnp.einsum('bhqk,bkhd->bqhd', probs_BxHxQxK, value_BxKxHxD)


def scaled_dot_product(query_BxQxHxD, key_BxKxHxD, value_BxKxHxD, mask,
                       dropout=None):
  """softmax(q k^T / sqrt(d)) v with a boolean mask broadcastable to BxHxQxK.

  Returns:
    The attended values, [B, Q, H, D].
  """
  return softmax_weighted_sum(
      dot_product_scores(query_BxQxHxD, key_BxKxHxD), value_BxKxHxD, mask,
      dropout,
  )


def repeat_kv_heads(x_BxKxGxD, num_heads: int):
  """Repeats G key/value heads so that query head h uses head h // (H / G)."""
  return jnp.repeat(x_BxKxGxD, num_heads // x_BxKxGxD.shape[2], axis=2)


def _default_positions(batch: int, length: int):
  return jnp.broadcast_to(jnp.arange(length), (batch, length))


@registry.register('dot_product')
class DotProductAttention(nn.Module):
  """Multi-head (or grouped-query) softmax attention over cached keys/values.

  With `num_kv_heads == num_heads`, parameter names and shapes match
  `flax.linen.MultiHeadDotProductAttention`.

  Self-attention is recognised by a causal module or by the caller passing
  the same array as `inputs_q` and `inputs_kv` (as the Transformer does);
  only then do in-attention position schemes and `_extra_mask` apply.
  """

  # Capabilities checked when a config is built (see masks.py).
  can_be_causal: ClassVar[bool] = True
  forms_scores: ClassVar[bool] = True

  cfg: TransformerConfig
  causal: bool = False

  @nn.compact
  def __call__(self, inputs_q, inputs_kv, q_segment_ids, kv_segment_ids,
               q_positions=None, kv_positions=None):
    cfg = self.cfg
    positions.check_scheme(cfg.position_scheme)
    query = self._project('query', cfg.num_heads, inputs_q)
    bias = None
    if cfg.decode and not self.causal:
      key, value = self._cached_memory(inputs_kv)
      mask = masks.key_padding_mask(kv_segment_ids)
    elif self.causal or inputs_kv is inputs_q:
      query, key, value, mask, bias = self._self_attention(
          query, inputs_kv, q_segment_ids, kv_segment_ids, q_positions,
          kv_positions,
      )
    else:
      key = self._project('key', self.num_kv_heads, inputs_kv)
      value = self._project('value', self.num_kv_heads, inputs_kv)
      mask = masks.segment_mask(q_segment_ids, kv_segment_ids)

    dropout = None
    if not cfg.deterministic and cfg.attention_dropout_rate > 0:
      dropout = functools.partial(
          nn.Dropout(cfg.attention_dropout_rate), deterministic=False
      )
    implementation = 'xla'
    if type(self) is DotProductAttention:  # pylint: disable=unidiomatic-typecheck
      # Fused kernels compute the plain baseline only (no other scores,
      # windows or chunking), and the TPU kernel takes a mask only as
      # segment ids (not a decoding cache's).
      implementation = kernels.resolve(
          cfg.implementation, query, key, has_dropout=dropout is not None,
          has_bias=bias is not None, has_segment_ids=not cfg.decode,
      )
    if implementation == 'xla':
      out_BxQxHxD = self._attend(query, key, value, mask, bias, dropout)
    else:
      out_BxQxHxD = kernels.attend_with(
          implementation, query, key, value, mask=mask, bias=bias,
          segment_ids=(q_segment_ids, kv_segment_ids), causal=self.causal,
      )
    return projections.from_heads(cfg, out_BxQxHxD, inputs_q.shape[-1])

  @property
  def num_kv_heads(self) -> int:
    """Key/value heads G; G divides the query heads H."""
    num_kv_heads = self.cfg.num_kv_heads or self.cfg.num_heads
    if self.cfg.num_heads % num_kv_heads:
      raise ValueError(
          f'num_kv_heads={num_kv_heads} must divide '
          f'num_heads={self.cfg.num_heads}.'
      )
    return num_kv_heads

  def _scores(self, query_BxQxHxD, key_BxKxHxD):
    """Logits [B, H, Q, K] of every query against every key (see module)."""
    return dot_product_scores(query_BxQxHxD, key_BxKxHxD)

  def _attend(self, query_BxQxHxD, key_BxKxGxD, value_BxKxGxD, mask, bias,
              dropout):
    """Softmax attention of the queries over the keys (see module docstring).

    Args:
      query_BxQxHxD: projected (and, with rope, rotated) queries.
      key_BxKxGxD: projected keys with G = num_kv_heads heads.
      value_BxKxGxD: projected values with G heads.
      mask: boolean, broadcastable to [B, H, Q, K]; True where a query may
        attend to a key.
      bias: None, or a float32 score bias broadcastable to [B, H, Q, K],
        added before masking (ALiBi, relative positions).
      dropout: None, or a callable applied to the attention probabilities.

    Returns:
      The attended values, [B, Q, H, D].
    """
    num_heads = query_BxQxHxD.shape[2]
    key_BxKxHxD = repeat_kv_heads(key_BxKxGxD, num_heads)
    value_BxKxHxD = repeat_kv_heads(value_BxKxGxD, num_heads)
    logits_BxHxQxK = self._scores(query_BxQxHxD, key_BxKxHxD).astype(
        jnp.float32
    )
    if bias is not None:
      logits_BxHxQxK += bias
    return softmax_weighted_sum(logits_BxHxQxK, value_BxKxHxD, mask, dropout)

  def _extra_mask(self, q_positions_BxQ, kv_positions_BxK):
    """Self-attention mask beyond padding/segments/causality; None = none.

    Returns:
      None, or a boolean mask broadcastable to [B, H, Q, K].
    """
    del q_positions_BxQ, kv_positions_BxK
    return None

  def _project(self, name, num_heads, inputs_BxLxE):
    return projections.to_heads(self.cfg, name, num_heads, inputs_BxLxE)

  def _self_attention(self, query, inputs_kv, q_segment_ids, kv_segment_ids,
                      q_positions, kv_positions):
    """Keys, values, mask and score bias when queries and keys are one sequence.

    Positions default to 0, 1, ... along the row. In decoding, rows are not
    packed, so a token's position is its cache slot: the query's position is
    the cache index and the keys' positions are the slots 0..max_len-1.
    Keys are rotated (rope) before they are cached, so each cached key keeps
    the rotation of its own position.

    Returns:
      (query, key, value, mask, bias) for `_attend`.
    """
    scheme = self.cfg.position_scheme
    key = self._project('key', self.num_kv_heads, inputs_kv)
    value = self._project('value', self.num_kv_heads, inputs_kv)
    batch, length = query.shape[:2]
    if self.cfg.decode:
      creating = not self.has_variable('cache', 'cached_key')
      if creating:
        q_positions = _default_positions(batch, length)
      else:
        index = self.get_variable('cache', 'cache_index')
        q_positions = jnp.full((batch, length), index)
      # In self-attention the new keys are the query tokens.
      new_kv_positions = q_positions
    else:
      if q_positions is None:
        q_positions = _default_positions(batch, length)
      if kv_positions is None:
        kv_positions = _default_positions(batch, key.shape[1])
      new_kv_positions = kv_positions
    if scheme == 'rope':
      query = positions.rotate(query, q_positions)
      key = positions.rotate(key, new_kv_positions)

    if self.cfg.decode:
      key, value, mask = self._append_to_cache(key, value)
      kv_positions = _default_positions(batch, key.shape[1])
    else:
      mask = masks.segment_mask(q_segment_ids, kv_segment_ids)
      if self.causal:
        mask &= masks.causal_mask(query.shape[1], key.shape[1])
    extra_mask = self._extra_mask(q_positions, kv_positions)
    if extra_mask is not None:
      mask &= extra_mask

    bias = None
    if scheme == 'alibi':
      bias = positions.alibi_bias(
          q_positions, kv_positions, self.cfg.num_heads
      )
    elif scheme == 'relative_bias':
      bias = positions.RelativePositionBias(
          num_heads=self.cfg.num_heads,
          num_buckets=self.cfg.relative_num_buckets,
          max_distance=self.cfg.relative_max_distance,
          bidirectional=not self.causal,
          name='relative_bias',
      )(q_positions, kv_positions)
    return query, key, value, mask, bias

  def _cached_memory(self, inputs_kv):
    """Projects the encoder memory once, on the cache-creating call."""
    if self.has_variable('cache', 'memory_key'):
      key = self.get_variable('cache', 'memory_key')
      value = self.get_variable('cache', 'memory_value')
    else:
      key = self._project('key', self.num_kv_heads, inputs_kv)
      value = self._project('value', self.num_kv_heads, inputs_kv)
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
    # A scalar: beam search reorders rows but every row is at the same step.
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
