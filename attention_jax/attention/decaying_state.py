"""The mechanism class and options shared by `retnet`, `gla` and `mamba2`
(and the options of `deltanet` and `gated_deltanet`).

`DecayingState` computes every place from the log-decays its subclasses
supply, with the forms of `decay_scan` (see its docstring for the
definitions); `DecayOptions` holds the chunk size, the causal form and the
layer options of `conv_norm_gate`.
"""

import dataclasses

import jax.numpy as jnp

from attention_jax.attention import base
from attention_jax.attention import conv_norm_gate
from attention_jax.attention import decay_scan
from attention_jax.attention import linear


@dataclasses.dataclass(frozen=True)
class DecayOptions(conv_norm_gate.ConvNormGateOptions):
  """Options of the linear-state mechanisms here and of the delta rule's."""
  # Positions per chunk of the chunked forms; any value computes the same
  # attention (64 as in flash-linear-attention's kernels).
  chunk_size: int = 64
  # How causal self-attention is computed in training and evaluation:
  # 'chunked' (the chunk-parallel form) or 'recurrent' (a lax.scan over
  # tokens, the decoding step's own form: slower, the plain reference).
  # Both compute the same function; other places always use their parallel
  # forms.
  form: str = 'chunked'

  def __post_init__(self):
    super().__post_init__()
    if self.chunk_size < 1:
      raise ValueError(f'chunk_size={self.chunk_size} must be at least 1.')
    check_form(self.form)


FORMS = ('chunked', 'recurrent')


def check_form(form: str) -> None:
  """Raises ValueError unless `form` is one of FORMS."""
  if form not in FORMS:
    raise ValueError(f'form={form!r} is not one of {FORMS}.')


# Shared with `deltanet`: what the options change, what the contract suite
# turns on, and what the family can do.
RESUMABLE_FIELDS = ('chunk_size', 'form')
TEST_OPTIONS = {'chunk_size': 3, 'conv_size': 3, 'output_gate': 'swish',
                'output_norm': True}
CAPABILITIES = base.Capabilities(
    causal=True,
    bidirectional=True,
    cross_attention=True,
    decoding_state=base.DecodingState.RECURRENT,
    position_schemes=frozenset(),
    attention_weights=False,
    inspectable_weights=False,
)


def initial_state(options: DecayOptions, key_BxKxGxD, value_BxKxGxD,
                  num_heads: int) -> dict:
  """The decoding state before any token: {'state': 0 [B, H, d_k, d_v]} and
  the convolution's buffers under `options` (`conv_norm_gate`)."""
  state = jnp.zeros((value_BxKxGxD.shape[0], num_heads,
                     key_BxKxGxD.shape[-1], value_BxKxGxD.shape[-1]),
                    jnp.float32)
  return {'state': state, **conv_norm_gate.initial_conv_state(
      options, num_heads, key_BxKxGxD, value_BxKxGxD)}


class DecayingState(base.Mechanism):
  """A mechanism whose state decays by the log-decays of its keys.

  Subclasses define `key_extras`, `reference_extras` (the log-decays, and
  what `keys` reads, from the paper's equations) and, where they differ
  from the defaults, `log_decay`, `queries`, `keys` and `skip`. Everything
  is float32. Decoding state: {'state': [B, H, d_k, d_v]}, the running S
  (causal) or S_last + S'_first of the memory (cross-attention), and in
  causal decoding with a short convolution 'conv' (`conv_norm_gate`).
  """

  Options = DecayOptions
  RESUMABLE_FIELDS = RESUMABLE_FIELDS
  TEST_OPTIONS = TEST_OPTIONS
  capabilities = CAPABILITIES

  def log_decay(self, module, key_extras, num_heads: int, head_dim: int):
    """log a of every key, [B, K, H] or [B, K, H, head_dim]."""
    del module, num_heads, head_dim
    return key_extras['log_decay']

  def queries(self, query_BxQxHxD):
    """float32 queries as the state is read with them."""
    return query_BxQxHxD.astype(jnp.float32)

  def keys(self, key_BxKxHxD, key_extras):
    """float32 keys as they enter the state."""
    del key_extras
    return key_BxKxHxD.astype(jnp.float32)

  def skip(self, module, num_heads: int):
    """None, or a weight per head [H]: self-attention then adds w_h v_t,
    each token's own (convolved) value, to its output (Mamba-2's D)."""
    del module, num_heads
    return None

  def reference_skip(self, params):
    """`skip` from the parameters."""
    del params
    return None

  def reference_extras(self, params, inputs_kv_BxKxE, num_heads):
    """{'log_decay': [B, K, H] or [B, K, H, D], and what `keys` reads} from
    the paper's equations, without Flax modules."""
    raise NotImplementedError

  def _keys(self, key_BxKxGxD, value_BxKxGxD, extras, log_decay, num_heads):
    """float32 keys, values (G heads repeated to H) and log-decays
    [B, K, H, 1 or D]."""
    key, value = (base.repeat_kv_heads(x, num_heads)
                  for x in (key_BxKxGxD, value_BxKxGxD))
    return (self.keys(key, extras), value.astype(jnp.float32),
            decay_scan.as_channels(log_decay).astype(jnp.float32))

  def _module_keys(self, module, key_BxKxGxD, value_BxKxGxD, extras,
                   num_heads):
    log_decay = self.log_decay(module, extras, num_heads,
                               key_BxKxGxD.shape[-1])
    return self._keys(key_BxKxGxD, value_BxKxGxD, extras, log_decay,
                      num_heads)

  def _with_skip(self, out_BxLxHxD, skip_H, value_BxLxHxD):
    if skip_H is None:
      return out_BxLxHxD
    return out_BxLxHxD + skip_H[None, None, :, None] * value_BxLxHxD

  def attend(self, module, inputs):
    inputs = conv_norm_gate.convolve(module, self.options, inputs)
    q = self.queries(inputs.query_BxQxHxD)
    k, v, log_decay = self._module_keys(
        module, inputs.key_BxKxGxD, inputs.value_BxKxGxD, inputs.key_extras,
        inputs.num_heads)
    mask, chunk_size = inputs.mask, self.options.chunk_size
    if not inputs.self_attention:
      weighted_k = k * decay_scan.memory_key_weights(
          log_decay, mask.kv_segment_ids_BxK)
      return linear.segment_sums(
          q, weighted_k, v, mask.q_segment_ids_BxQ, mask.kv_segment_ids_BxK,
          chunk_size)
    segment_ids = mask.kv_segment_ids_BxK
    if inputs.causal and self.options.form == 'recurrent':
      out = decay_scan.reference_recurrence(q, k, v, log_decay,
                                            segment_ids)[0]
    elif inputs.causal:
      out = decay_scan.causal_scan(q, k, v, log_decay, segment_ids,
                                   chunk_size)[0]
    else:
      out = decay_scan.bidirectional_scan(q, k, v, log_decay, segment_ids,
                                          chunk_size)
    return self._with_skip(out, self.skip(module, inputs.num_heads), v)

  def finish(self, module, out_BxQxHxD, inputs_q_BxQxE):
    return conv_norm_gate.finish(module, self.options, out_BxQxHxD,
                                 inputs_q_BxQxE)

  def reference(self, params, inputs, path=()):
    del path
    extras = self.reference_extras(params, inputs.inputs_kv_BxKxE,
                                   inputs.num_heads)
    heads = conv_norm_gate.reference_convolve(params, self.options, inputs)
    q = self.queries(heads.query_BxQxHxD)
    k, v, log_decay = self._keys(heads.key_BxKxGxD, heads.value_BxKxGxD,
                                 extras, extras['log_decay'],
                                 inputs.num_heads)
    if inputs.causal:
      out = decay_scan.reference_recurrence(
          q, k, v, log_decay, inputs.mask.kv_segment_ids_BxK)[0]
    else:
      out = decay_scan.reference_dense(
          q, k, v, log_decay, base.reference_mask(inputs)[:, 0],
          inputs.mask.kv_segment_ids_BxK,
          self_attention=inputs.self_attention)
    if inputs.self_attention:
      out = self._with_skip(out, self.reference_skip(params), v)
    return conv_norm_gate.reference_finish(params, self.options, out,
                                           inputs.inputs_q_BxQxE)

  def initial_state(self, module, key_BxKxGxD, value_BxKxGxD, num_heads):
    del module
    return initial_state(self.options, key_BxKxGxD, value_BxKxGxD, num_heads)

  def step(self, module, state, query_Bx1xHxD, key_Bx1xGxD, value_Bx1xGxD,
           key_extras):
    """S = Diag(a_t) S + k_t^T v_t, then o_t = q_t S (+ the skip)."""
    query, key, value, state = conv_norm_gate.convolve_step(
        module, self.options, state, query_Bx1xHxD, key_Bx1xGxD,
        value_Bx1xGxD)
    num_heads = query.shape[2]
    k, v, log_decay = self._module_keys(module, key, value, key_extras,
                                        num_heads)
    decayed = jnp.exp(log_decay[:, 0])[..., None] * state['state']
    state = {**state, 'state': decayed + jnp.einsum('bhk,bhv->bhkv',
                                                    k[:, 0], v[:, 0])}
    out = self.read(module, state, query)
    return self._with_skip(out, self.skip(module, num_heads), v), state

  def summarise(self, module, key_BxKxGxD, value_BxKxGxD, kv_segment_ids_BxK,
                num_heads, key_extras):
    k, v, log_decay = self._module_keys(module, key_BxKxGxD, value_BxKxGxD,
                                        key_extras, num_heads)
    weights = decay_scan.memory_key_weights(log_decay, kv_segment_ids_BxK)
    real_BxK = kv_segment_ids_BxK[..., None, None] > 0
    return {'state': jnp.einsum('bkhd,bkhv->bhdv',
                                jnp.where(real_BxK, k * weights, 0.0), v)}

  def read(self, module, summary, query_BxQxHxD):
    del module
    return jnp.einsum('bqhk,bhkv->bqhv', self.queries(query_BxQxHxD),
                      summary['state'])
