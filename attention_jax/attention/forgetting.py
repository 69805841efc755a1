"""Forgetting attention (Lin et al., 2025, "Forgetting Transformer: Softmax
Attention with a Forget Gate", FoX, ICLR 2025).

Softmax attention whose logits are down-weighted by a data-dependent forget
gate per head, f_t = sigmoid(x_t w_f + b_f) (w_f: E x H, b_f: H), read from
the key-side inputs x:

  z_ij = q_i·k_j / sqrt(d) + D_ij,   D_ij = sum_{l=j+1}^{i} log f_l,
  o_i  = sum_j softmax_j(z_ij) v_j   over the keys query i may see.

D_ij <= 0 decays a key by the gates of the tokens after it up to the query;
D_ii = 0. The paper defines causal self-attention. Non-causal (encoder)
self-attention uses the bidirectional form of the same definition, sum of
log f over the span between key and query: D_ij = sum of log f_l for l in
(min(i, j), max(i, j)]. The paper defines no cross-attention form, so none
is offered. As in the official code, w_f starts small (normal, std 0.02)
and b_f at 0, so every gate starts near 1/2: a key 20 tokens back starts at
2^-20 of its weight. The options `decay_time_min` / `decay_time_max` start
b_f instead from decay times T (tokens), one per head spaced evenly in
log T, with log sigmoid(b_f) = -1/T, so that a gate starts at
f = exp(-1/T); the official code offers this init (its `fgate_bias_init`)
for its data-independent gate ablations only. This is the basic FoX; the
"Pro" block's output gate, output normalisation, QK-norm and key/value
shifts are not included (the model's own `qk_norm` applies to the queries
and keys as to softmax attention).

The gates are key extras: computed per token by `key_extras` and kept per
slot in the decoding cache, so a decoding step forms D from the cached
gates up to the query's own slot.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import partitioning as part
from attention_jax.attention import base
from attention_jax.attention import gate_inits
from attention_jax.attention import registry
from attention_jax.attention import softmax


@dataclasses.dataclass(frozen=True)
class ForgettingOptions:
  """The forget gate's bias at initialisation (see the module docstring)."""

  # Decay times in tokens of the first and last head's initial gate; both
  # 0: b_f = 0 (the paper's default, f = 1/2).
  decay_time_min: float = 0.0
  decay_time_max: float = 0.0

  def __post_init__(self):
    times = (self.decay_time_min, self.decay_time_max)
    if times != (0.0, 0.0) and not 0 < times[0] <= times[1]:
      raise ValueError(
          f'decay_time_min={times[0]} and decay_time_max={times[1]} must '
          'both be 0 (gate bias 0, the paper\'s init) or satisfy 0 < '
          'decay_time_min <= decay_time_max (decay times in tokens).')


def decay_time_bias(decay_time_min: float, decay_time_max: float):
  """Initializer of a gate bias b [H] with -1 / log sigmoid(b_h) = T_h.

  T_h runs from decay_time_min to decay_time_max evenly in log T; a single
  head gets decay_time_min. b = -log(exp(1/T) - 1), the inverse of
  sigmoid(b) = exp(-1/T) (Lin et al., 2025, the data-independent gate's
  init).
  """
  def init(key, shape, dtype=jnp.float32):
    del key
    log_time_H = jnp.linspace(math.log(decay_time_min),
                              math.log(decay_time_max), shape[0])
    return (-gate_inits.inverse_softplus(jnp.exp(-log_time_H))).astype(dtype)
  return init


def _decay(log_forget_BxHxK, query_slot_BxQ, causal: bool):
  """D [B, H, Q, K]: the sum of log f over the span between key and query.

  Per query, log f of the slots up to its own are summed from the far end
  towards the key (a reverse cumulative sum); the encoder adds the slots
  after it summed forwards. Every partial sum only grows in magnitude, so
  D is never the difference of two long prefix sums, whose float32 rounding
  (relative to their size, thousands at 4k tokens with strong forgetting)
  would swamp the small D of nearby keys.
  """
  slots_K = jnp.arange(log_forget_BxHxK.shape[-1])
  upto_Bx1xQxK = (slots_K[None, None, :]
                  <= query_slot_BxQ[:, :, None])[:, None]
  log_f_Bx1xK = log_forget_BxHxK[:, :, None, :]
  back_BxHxQxK = jax.lax.cumsum(jnp.where(upto_Bx1xQxK, log_f_Bx1xK, 0.0),
                                axis=3, reverse=True)
  # The key's own gate is not part of its span: shift by one slot.
  decay_BxHxQxK = jnp.pad(back_BxHxQxK[..., 1:], [(0, 0)] * 3 + [(0, 1)])
  if not causal:
    decay_BxHxQxK += jax.lax.cumsum(
        jnp.where(upto_Bx1xQxK, 0.0, log_f_Bx1xK), axis=3)
  return decay_BxHxQxK


@registry.register('forgetting')
class Forgetting(base.Mechanism):
  """softmax(q k^T / sqrt(d) + D + bias) v, D from per-head forget gates.

  Parameters: the frame's, plus 'forget_gate' (kernel [E, H], bias [H]).
  """

  Options = ForgettingOptions
  # Scores as softmax attention's, with these differences.
  capabilities = dataclasses.replace(
      softmax.FAMILY_CAPABILITIES, cross_attention=False)

  def key_extras(self, module, inputs_kv_BxKxE, kv_positions_BxK, rotate,
                 num_heads):
    del kv_positions_BxK, rotate
    if self.options.decay_time_min:
      bias_init = decay_time_bias(self.options.decay_time_min,
                                  self.options.decay_time_max)
    else:
      bias_init = nn.initializers.zeros
    # In float32: D sums thousands of these, so their rounding adds up.
    gate_logits_BxKxH = nn.DenseGeneral(
        features=num_heads,
        dtype=jnp.float32,
        kernel_init=part.init(nn.initializers.normal(0.02), part.EMBED,
                              part.HEADS),
        bias_init=part.init(bias_init, part.HEADS),
        name='forget_gate',
        parent=module,
    )(inputs_kv_BxKxE.astype(jnp.float32))
    return {'log_forget': jax.nn.log_sigmoid(gate_logits_BxKxH)}

  def attend(self, module, inputs):
    del module
    logits_BxHxQxK, value_BxKxHxD = softmax.biased_logits(inputs)
    num_q, num_k = logits_BxHxQxK.shape[2:]
    if inputs.decoding:
      # The step's query is the cache slot at its position.
      query_slot_BxQ = inputs.mask.q_positions_BxQ
    else:
      # Queries are the last Q of the keys' sequence (Q = K here).
      query_slot_BxQ = jnp.broadcast_to(
          jnp.arange(num_q) + num_k - num_q, inputs.mask.q_positions_BxQ.shape)
    log_forget_BxHxK = jnp.moveaxis(inputs.key_extras['log_forget'], 2, 1)
    logits_BxHxQxK += _decay(log_forget_BxHxK.astype(jnp.float32),
                             query_slot_BxQ, inputs.causal)
    return softmax.softmax_weighted_sum(
        logits_BxHxQxK, value_BxKxHxD, inputs.mask.dense(), inputs.dropout,
        inputs.sink_logit_H, inputs.capture_weights)

  def reference(self, params, inputs, path=()):
    return softmax.reference_from_weights(self, params, inputs, path)

  def reference_weights(self, params, inputs, path=()):
    del path
    logits, _ = softmax.reference_logits(inputs)
    x = inputs.inputs_kv_BxKxE.astype(jnp.float32)
    gate = params['forget_gate']
    a_BxKxH = (jnp.einsum('bke,eh->bkh', x, gate['kernel'])
               + gate['bias'][None, None])
    log_f_BxHxK = jnp.moveaxis(-jnp.log1p(jnp.exp(-a_BxKxH)), 2, 1)
    num_q, num_k = logits.shape[2:]
    i = (jnp.arange(num_q) + num_k - num_q)[:, None, None]
    j = jnp.arange(num_k)[None, :, None]
    l = jnp.arange(num_k)[None, None, :]
    # l in (min(i, j), max(i, j)]: the span between key j and query i.
    span_QxKxL = (jnp.minimum(i, j) < l) & (l <= jnp.maximum(i, j))
    decay = jnp.sum(jnp.where(span_QxKxL[None, None],
                              log_f_BxHxK[:, :, None, None, :], 0.0), -1)
    return softmax.reference_softmax_weights(
        logits + decay, base.reference_mask(inputs), inputs.sink_logit_H)
