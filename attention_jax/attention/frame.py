"""The multi-head frame every attention mechanism runs in.

`MultiHeadAttention` owns what all mechanisms share: the per-head input
projections ('query', 'key', 'value', with G = num_kv_heads key/value heads
for grouped-query or multi-query attention; Ainslie et al., 2023), the
output projection 'out', rotary positions and score biases of the position
scheme (self-attention only), QK-norm, the attention sink logit, dropout on
attention weights and their capture for inspection (sown as
'intermediates'/'attention_weights', [B, H, Q, K] float32, when a caller
makes 'intermediates' mutable), and decoding: the step counter, the
key/value cache (with the mechanism's per-key extras) or the mechanism's own
recurrent state, and the projected encoder memory (in the MEMORY
collection). The mechanism, looked up by name,
supplies only `attend` (see base.py), and `finish` on its output before the
output projection. With `num_kv_heads` equal to
`num_heads`, parameter names and shapes match
`flax.linen.MultiHeadDotProductAttention`.

Decoding (`AttentionConfig.decode`): the first call with an empty cache sees
the full decode length and only creates the cache (its output is zeros and
unused), of as many slots as the mechanism's `decoding_cache_slots` asks
(a ring of the latest keys for windowed mechanisms); every later call
consumes one token per row. Beam search reorders
rows of every 'cache' leaf that leads with the batch; the step counter is a
scalar, as every row is at the same step. Cross-attention's projected
encoder memory is written by the creating call into the MEMORY collection
and only read afterwards: it is the same for every beam of a sentence, so
beam search carries it unchanged instead of reordering it at every step.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import partitioning as part
from attention_jax.attention import base
from attention_jax.attention import fused
from attention_jax.attention import head_norms
from attention_jax.attention import masks
from attention_jax.attention import positions
from attention_jax.attention import registry

DecodingState = base.DecodingState
# Normalisation of queries and keys per head before they form scores.
QK_NORMS = ('none', 'rms', 'l2')
# The attention sink: none, a learned logit per head, or a logit fixed at 0.
SINKS = ('none', 'learned', 'zero')
# The variable collection of cross-attention's projected encoder memory in
# decoding: constant after the creating call, which must make it mutable.
MEMORY = 'memory'


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  """Hyper-parameters of one attention layer.

  Attributes:
    mechanism: registry name of the mechanism.
    options: its options (an instance of its `Options`; None: defaults).
    num_heads: query heads H.
    head_dim: size D of each head.
    num_kv_heads: key/value heads G; 0 means H (multi-head), 1 multi-query.
    position_scheme: registry name of the model's position scheme.
    position_options: its options (None: defaults).
    dropout_rate: dropout on attention weights, where the mechanism has them.
    implementation: fused-kernel request, one of `fused.IMPLEMENTATIONS`.
    dtype: compute dtype of projections and attention.
    deterministic: no dropout.
    decode: incremental decoding with a cache (see module docstring).
    layer_index: the layer's index in its encoder or decoder stack, from 0.
    qk_norm: one of QK_NORMS: 'rms' applies RMSNorm with a learned scale
      per channel to each head's query and key (Dehghani et al., 2023;
      OLMo 2); 'l2' scales them to unit length and multiplies the query by
      a learned per-head gain g·sqrt(D), so dot-product logits are
      g·cos(q, k) (Henry et al., 2020, "Query-Key Normalization").
    qk_norm_gain: initial g of 'l2' (Henry et al. initialise it from the
      training length, log2(L^2 - L): 12 for L = 64).
    attention_sink: one of SINKS: a per-head sink logit in the softmax
      denominator, learned (initialised to 0) or fixed at 0
      (softmax-off-by-one), for mechanisms with the `sink` capability.
  """

  mechanism: str = 'softmax'
  options: Any = None
  num_heads: int = 8
  head_dim: int = 64
  num_kv_heads: int = 0
  position_scheme: str = 'sinusoidal'
  position_options: Any = None
  dropout_rate: float = 0.0
  implementation: str = 'auto'
  dtype: Any = jnp.float32
  deterministic: bool = False
  decode: bool = False
  layer_index: int = 0
  qk_norm: str = 'none'
  qk_norm_gain: float = 12.0
  attention_sink: str = 'none'

  @property
  def kv_heads(self) -> int:
    """G, checked to divide H."""
    num_kv_heads = self.num_kv_heads or self.num_heads
    if self.num_heads % num_kv_heads:
      raise ValueError(
          f'num_kv_heads={num_kv_heads} must divide num_heads={self.num_heads}.'
      )
    return num_kv_heads


# Cache entries of the projected heads, [B, T, G, D], stored as [B, G, T, D].
_HEAD_MAJOR = ('key', 'value')


def _stored_shape(shape, time_axis: int):
  """Shape of a cache entry of `shape` [B, T, ...] stored with its time
  axis at `time_axis`."""
  shape = list(shape)
  shape.insert(time_axis, shape.pop(1))
  return tuple(shape)


def _head_major(x_BxTxGxD):
  """[B, T, G, D] -> [B, G, T, D]; None (a projection not made) stays None."""
  return None if x_BxTxGxD is None else jnp.swapaxes(x_BxTxGxD, 1, 2)


def _time_major(x_BxGxTxD):
  """The inverse of `_head_major`."""
  return None if x_BxGxTxD is None else jnp.swapaxes(x_BxGxTxD, 1, 2)


def _default_positions(batch: int, length: int):
  return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32),
                          (batch, length))


def _apply(rotate, x_BxLxHxD, positions_BxL):
  """`rotate` of projected heads; None (a projection not made) stays None."""
  return None if x_BxLxHxD is None else rotate(x_BxLxHxD, positions_BxL)


def takes_qk_norm(caps: base.Capabilities) -> bool:
  """Whether the model's `qk_norm` may act on a mechanism's queries/keys."""
  return caps.qk_norm and {'query', 'key'} <= set(caps.projections)


def check_place(mechanism: type[base.Mechanism], scheme: type, *,
                causal: bool, self_attention: bool, qk_norm: str = 'none',
                attention_sink: str = 'none') -> None:
  """Raises ValueError when `mechanism` cannot serve this place and scheme,
  naming what it cannot do."""
  caps = mechanism.capabilities
  if causal and not self_attention:
    raise ValueError('Causal attention is self-attention.')
  if causal and not caps.causal:
    raise ValueError(f'{mechanism.name!r} cannot be causal.')
  if self_attention and not causal and not caps.bidirectional:
    raise ValueError(
        f'{mechanism.name!r} is defined for causal self-attention only, not '
        'for the non-causal (encoder) self-attention.')
  if not self_attention and not caps.cross_attention:
    raise ValueError(
        f'{mechanism.name!r} has no cross-attention form (its paper defines '
        'none).')
  if self_attention and scheme.acts_in != positions.EMBEDDING:
    if scheme.name not in caps.position_schemes:
      raise ValueError(
          f'{mechanism.name!r} does not honour position_scheme '
          f'{scheme.name!r}.'
      )
  if qk_norm not in QK_NORMS:
    raise ValueError(f'qk_norm={qk_norm!r} is not one of {QK_NORMS}.')
  if qk_norm != 'none' and not takes_qk_norm(caps):
    raise ValueError(
        f'qk_norm={qk_norm!r} normalises the projected queries and keys, '
        f'which {mechanism.name!r} does not use or normalises itself.')
  if attention_sink not in SINKS:
    raise ValueError(
        f'attention_sink={attention_sink!r} is not one of {SINKS}.')
  if attention_sink != 'none' and not caps.sink:
    raise ValueError(
        f'attention_sink={attention_sink!r} adds a logit to a softmax '
        f'denominator, which {mechanism.name!r} does not have.')


class MultiHeadAttention(nn.Module):
  """Multi-head attention with the mechanism `config.mechanism`.

  Attributes:
    config: the layer's hyper-parameters.
    causal: each query sees only keys at or before it (decoder).
    self_attention: queries and keys come from one sequence; position schemes
      act only then. Explicit: never inferred from the inputs.
  """

  config: AttentionConfig
  causal: bool = False
  self_attention: bool = True

  @nn.compact
  def __call__(self, inputs_q_BxQxE, inputs_kv_BxKxE, q_segment_ids_BxQ,
               kv_segment_ids_BxK, q_positions_BxQ=None, kv_positions_BxK=None):
    """Attends queries to keys; returns [B, Q, E] in the compute dtype.

    Args:
      inputs_q_BxQxE: query-side inputs.
      inputs_kv_BxKxE: key/value-side inputs (the encoder memory in
        cross-attention; the same sequence in self-attention).
      q_segment_ids_BxQ: int32 segment ids of the queries (0: padding).
      kv_segment_ids_BxK: int32 segment ids of the keys.
      q_positions_BxQ: int32 positions of the queries within their
        sentences; None: 0, 1, ... along the row.
      kv_positions_BxK: likewise for the keys.

    Raises:
      ValueError: when the mechanism cannot serve this place or scheme.
    """
    config = self.config
    mechanism_cls = registry.get(config.mechanism)
    scheme = positions.SCHEMES.get(config.position_scheme)(
        config.position_options
    )
    check_place(mechanism_cls, type(scheme), causal=self.causal,
                self_attention=self.self_attention, qk_norm=config.qk_norm,
                attention_sink=config.attention_sink)
    mechanism = mechanism_cls(config.options, config.layer_index)
    query = self._project('query', config.num_heads, inputs_q_BxQxE)
    if config.decode and not self.self_attention:
      out_BxQxHxD = self._decode_cross(mechanism, inputs_q_BxQxE, query,
                                       inputs_kv_BxKxE, kv_segment_ids_BxK)
    else:
      key = self._project('key', config.kv_heads, inputs_kv_BxKxE)
      value = self._project('value', config.kv_heads, inputs_kv_BxKxE)
      batch, q_len = inputs_q_BxQxE.shape[:2]
      if config.decode:
        out_BxQxHxD = self._decode_self(mechanism, scheme, inputs_q_BxQxE,
                                        query, key, value)
      else:
        if q_positions_BxQ is None:
          q_positions_BxQ = _default_positions(batch, q_len)
        if kv_positions_BxK is None:
          kv_positions_BxK = _default_positions(batch,
                                                inputs_kv_BxKxE.shape[1])
        rotate = self._rotation(scheme)
        query = _apply(rotate, query, q_positions_BxQ)
        key = _apply(rotate, key, kv_positions_BxK)
        extras = mechanism.key_extras(self, inputs_kv_BxKxE, kv_positions_BxK,
                                      rotate, config.num_heads)
        mask = masks.TokenMask(q_segment_ids_BxQ, kv_segment_ids_BxK,
                               q_positions_BxQ, kv_positions_BxK,
                               causal=self.causal)
        out_BxQxHxD = self._attend(
            mechanism, scheme, inputs_q_BxQxE, query, key, value, mask,
            decoding=False, extras=extras, inputs_kv=inputs_kv_BxKxE)
    out_BxQxHxD = mechanism.finish(self, out_BxQxHxD, inputs_q_BxQxE)
    return self._output(out_BxQxHxD, inputs_q_BxQxE.shape[-1])

  def _rotation(self, scheme):
    """The scheme's rotation in self-attention; the identity otherwise."""
    if self.self_attention:
      return scheme.rotate
    return lambda x, positions: x

  def _project(self, name: str, num_heads: int, inputs_BxLxE):
    """[B, L, E] -> [B, L, num_heads, D] as layer `name`; None if unused.

    Queries and keys are normalised here under `qk_norm`.
    """
    if name not in registry.get(self.config.mechanism).capabilities.projections:
      return None
    projected = nn.DenseGeneral(
        features=(num_heads, self.config.head_dim),
        dtype=self.config.dtype,
        kernel_init=part.init(
            nn.initializers.xavier_uniform(), part.EMBED, part.HEADS,
            part.HEAD_DIM,
        ),
        bias_init=part.init(nn.initializers.zeros, part.HEADS, part.HEAD_DIM),
        name=name,
    )(inputs_BxLxE)
    if name == 'value' or self.config.qk_norm == 'none':
      return projected
    return self._qk_norm(name, projected)

  def _qk_norm(self, name: str, x_BxLxHxD):
    """`qk_norm` of projected queries or keys (see AttentionConfig)."""
    config = self.config
    x = x_BxLxHxD.astype(jnp.float32)
    if config.qk_norm == 'rms':
      scale_D = self.param(f'{name}_norm',
                           part.init(nn.initializers.ones, part.HEAD_DIM),
                           (config.head_dim,), jnp.float32)
      return head_norms.rms_normalise(x, scale_D, 1e-6).astype(
          x_BxLxHxD.dtype)
    x = head_norms.l2_normalise(x, 1e-12)
    if name == 'query':
      gain_H = self.param(
          'qk_norm_gain',
          part.init(nn.initializers.constant(config.qk_norm_gain), part.HEADS),
          (x.shape[2],), jnp.float32)
      x = x * (gain_H[None, None, :, None] * jnp.sqrt(config.head_dim))
    return x.astype(x_BxLxHxD.dtype)

  def _sink_logit(self):
    """The attention sink logit per head, [H] float32, or None."""
    sink = self.config.attention_sink
    if sink == 'none':
      return None
    if sink == 'zero':
      return jnp.zeros((self.config.num_heads,), jnp.float32)
    return self.param('sink', part.init(nn.initializers.zeros, part.HEADS),
                      (self.config.num_heads,), jnp.float32)

  def _output(self, out_BxQxHxD, width: int):
    """[B, Q, H, D] -> [B, Q, width] as layer 'out'."""
    return nn.DenseGeneral(
        features=width,
        axis=(-2, -1),
        dtype=self.config.dtype,
        kernel_init=part.init(
            nn.initializers.xavier_uniform(), part.HEADS, part.HEAD_DIM,
            part.EMBED,
        ),
        bias_init=part.init(nn.initializers.zeros, part.EMBED),
        name='out',
    )(out_BxQxHxD.astype(self.config.dtype))

  def _attend(self, mechanism, scheme, inputs_q, query, key, value, mask, *,
              decoding: bool, extras=None, inputs_kv=None):
    """Adds what the frame owns (bias, dropout, sink, fused kernels), then
    attends."""
    config = self.config
    caps = mechanism.capabilities
    bias = None
    if self.self_attention and caps.score_bias:
      bias = scheme.score_bias(mask.q_positions_BxQ, mask.kv_positions_BxK,
                               config.num_heads, self.causal)
    dropout = None
    if (not config.deterministic and config.dropout_rate > 0
        and caps.attention_weights):
      dropout = functools.partial(nn.Dropout(config.dropout_rate),
                                  deterministic=False)
    sink = self._sink_logit()
    capture = None
    # Only a caller that asks for the weights (mutable 'intermediates')
    # traces their capture; training, decoding and `init` (even one told
    # that every collection is mutable) trace nothing more.
    if (caps.inspectable_weights and not self.is_initializing()
        and self.is_mutable_collection('intermediates')):
      capture = functools.partial(self.sow, 'intermediates',
                                  'attention_weights')
    inputs = base.AttentionInputs(
        inputs_q, query, key, value, mask, bias_BxHxQxK=bias, dropout=dropout,
        dropout_rate=config.dropout_rate if dropout is not None else 0.0,
        self_attention=self.self_attention, causal=self.causal,
        decoding=decoding, num_heads=config.num_heads,
        head_dim=config.head_dim,
        key_extras=extras or {},
        rotate=self._rotation(scheme),
        sink_logit_H=sink, inputs_kv_BxKxE=inputs_kv,
        capture_weights=capture,
    )
    # Fused kernels never form the weights a capture asks for.
    if caps.fused_kernels and sink is None and capture is None:
      implementation = fused.resolve(
          config.implementation, query, key, has_dropout=dropout is not None,
          has_bias=bias is not None, has_segment_ids=not decoding,
      )
      if implementation in caps.fused_kernels:
        return fused.attend_with(
            implementation, query, key, value, mask=mask.dense(), bias=bias,
            segment_ids=(mask.q_segment_ids_BxQ, mask.kv_segment_ids_BxK),
            causal=mask.causal,
        )
    return mechanism.attend(self, inputs)

  def _decode_self(self, mechanism, scheme, inputs_q, query_step, key_step,
                   value_step):
    """One decoding step of self-attention (or the cache-creating call)."""
    creating = not self.has_variable('cache', 'cache_index')
    cache_index = self.variable('cache', 'cache_index',
                                lambda: jnp.array(0, jnp.int32))
    batch, length = inputs_q.shape[:2]
    if creating:
      step_positions = _default_positions(batch, length)
    else:
      if length != 1:
        raise ValueError(
            f'Incremental decoding consumes one token per call, got {length}.'
        )
      step_positions = jnp.full((batch, 1), cache_index.value, jnp.int32)
    rotate = self._rotation(scheme)
    query_step = _apply(rotate, query_step, step_positions)
    key_step = _apply(rotate, key_step, step_positions)
    zeros = jnp.zeros((batch, length, self.config.num_heads,
                       self.config.head_dim), jnp.float32)

    extras = mechanism.key_extras(self, inputs_q, step_positions, rotate,
                                  self.config.num_heads)
    if mechanism.capabilities.decoding_state is DecodingState.RECURRENT:
      state = self.variable(
          'cache', 'state', mechanism.initial_state, self, key_step,
          value_step, self.config.num_heads,
      )
      if creating:
        # One step on the first token, discarded, so that parameters the
        # mechanism makes in `step` exist when a decoder is initialised.
        first = lambda x: None if x is None else x[:, :1]  # noqa: E731
        mechanism.step(self, state.value, first(query_step), first(key_step),
                       first(value_step), jax.tree.map(first, extras))
        return zeros
      out, state.value = mechanism.step(self, state.value, query_step,
                                        key_step, value_step, extras)
      cache_index.value += 1
      return out

    # The cache holds, per slot, everything `attend` reads of a key. Keys
    # and values are stored head-major, [B, G, T, D], the layout of the
    # attention products' operands: stored [B, T, G, D], XLA copies the
    # whole cache into that layout at every step.
    per_key = {name: x for name, x in
               dict(key=key_step, value=value_step, **extras).items()
               if x is not None}
    time_axis = {name: 2 if name in _HEAD_MAJOR else 1 for name in per_key}
    # The creating call sees the whole decode length; a mechanism that
    # reads only the latest keys keeps that many slots, as a ring.
    num_slots = mechanism.decoding_cache_slots(length) if creating else None
    cached = {name: self.variable(
        'cache', f'cached_{name}', jnp.zeros,
        _stored_shape((batch, num_slots) + x.shape[2:], time_axis[name]),
        x.dtype)
              for name, x in per_key.items()}
    if creating:
      return zeros
    index = cache_index.value
    first = next(iter(cached))
    num_slots = cached[first].value.shape[time_axis[first]]
    for name, x in per_key.items():
      cached[name].value = jax.lax.dynamic_update_slice_in_dim(
          cached[name].value, jnp.moveaxis(x, 1, time_axis[name]),
          index % num_slots, axis=time_axis[name])
    cache_index.value = index + 1
    read = {name: jnp.moveaxis(cached[name].value, time_axis[name], 1)
            for name in cached}
    slots_BxK = _default_positions(batch, num_slots)
    # Written slots form the row's one sentence, each holding the latest
    # position p with p mod num_slots = slot (the slot itself until the
    # ring wraps); the rest are padding.
    written_BxK = slots_BxK <= index
    mask = masks.TokenMask(
        jnp.ones((batch, 1), jnp.int32), written_BxK.astype(jnp.int32),
        step_positions,
        jnp.where(written_BxK, index - (index - slots_BxK) % num_slots,
                  slots_BxK),
    )
    cached_extras = {name: read[name] for name in extras}
    return self._attend(
        mechanism, scheme, inputs_q, query_step, read.get('key'),
        read.get('value'), mask, decoding=True, extras=cached_extras)

  def _decode_cross(self, mechanism, inputs_q, query, inputs_kv_BxKxE,
                    kv_segment_ids_BxK):
    """Cross-attention in decoding: the memory is projected once."""
    creating = not self.has_variable(MEMORY, 'memory')
    batch, q_len = inputs_q.shape[:2]
    out_shape = (batch, q_len, self.config.num_heads, self.config.head_dim)
    if creating:
      key = self._project('key', self.config.kv_heads, inputs_kv_BxKxE)
      value = self._project('value', self.config.kv_heads, inputs_kv_BxKxE)
      # A decoded row holds one sentence: its real tokens are segment 1.
      real_BxK = (kv_segment_ids_BxK != 0).astype(jnp.int32)
      extras = mechanism.key_extras(
          self, inputs_kv_BxKxE,
          _default_positions(batch, inputs_kv_BxKxE.shape[1]),
          self._rotation(None), self.config.num_heads)
      if mechanism.capabilities.decoding_state is DecodingState.KV_CACHE:
        # Head-major, [B, G, K, D], as the self-attention cache. The
        # barrier keeps XLA from cancelling this transpose against the one
        # of every read, which would leave the memory time-major and copy
        # it into head-major layout at every decoding step.
        memory = jax.lax.optimization_barrier(
            {'key': _head_major(key), 'value': _head_major(value),
             'segment_ids': real_BxK, 'extras': extras})
      else:
        memory = mechanism.summarise(self, key, value, real_BxK,
                                     self.config.num_heads, extras)
      self.put_variable(MEMORY, 'memory', memory)
      return jnp.zeros(out_shape, jnp.float32)
    memory = self.get_variable(MEMORY, 'memory')
    if mechanism.capabilities.decoding_state is not DecodingState.KV_CACHE:
      return jnp.broadcast_to(mechanism.read(self, memory, query), out_shape)
    kv_len = memory['segment_ids'].shape[1]
    mask = masks.TokenMask(
        jnp.ones((batch, q_len), jnp.int32), memory['segment_ids'],
        _default_positions(batch, q_len), _default_positions(batch, kv_len),
    )
    return self._attend(mechanism, None, inputs_q, query,
                        _time_major(memory['key']),
                        _time_major(memory['value']), mask, decoding=True,
                        extras=memory['extras'])
