"""DeltaNet: linear attention with the delta rule (Schlag et al., 2021,
"Linear Transformers Are Secretly Fast Weight Programmers"; Yang et al.,
2024, NeurIPS, "Parallelizing Linear Transformers with the Delta Rule over
Sequence Length").

Each head keeps a fast-weight state that each token corrects towards its
value instead of only adding to it. With the state stored key by value,
M = Sᵀ (see `delta_rule.py`):

  M_t = (I − β_t k_t k_tᵀ) M_{t−1} + β_t k_t v_tᵀ,   o_t = M_tᵀ q_t,

q and k L2-normalised per head (‖k‖ = 1 keeps I − β k kᵀ a contraction),
β_t = sigmoid(x_t W_β) per head from the key-side inputs x (W_β: E x H, no
bias, as in flash-linear-attention's layer). The papers' kernels also scale
q by 1/√d; a constant factor the output projection absorbs, so o_t = S_t q_t
is kept as written. The papers use no position scheme (the recurrence is
order-aware), so none acts inside attention. The papers' layers add a
short convolution (with SiLU) on q, k and v before the normalisation, a
per-head output RMSNorm and an output gate; they are options here
(`conv_size=4`, `output_norm`, `output_gate='swish'`; see
`conv_norm_gate`), off by default.

Places:
  * Decoder self-attention: the causal recurrence, trained in the chunked
    WY form (`chunk_size` tokens per chunk), decoded with the constant state.
  * Encoder self-attention: o_t = M→_tᵀ q_t + M←_{t+1}ᵀ q_t, the forward
    recurrence over the sentence's tokens up to t plus the same recurrence
    run backwards from the sentence's last token down to t + 1; each key is
    counted once.
  * Cross-attention: every query reads the forward final state of the
    memory sentence, o_i = M_endᵀ q_i.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import partitioning as part
from attention_jax.attention import base
from attention_jax.attention import conv_norm_gate
from attention_jax.attention import decaying_state
from attention_jax.attention import delta_rule
from attention_jax.attention import head_norms
from attention_jax.attention import registry


def gate_projection(module, inputs_BxKxE, num_heads: int, name: str):
  """x W [B, K, H] in float32 (W: E x H, no bias), as parameter `name`."""
  return nn.DenseGeneral(
      features=num_heads,
      use_bias=False,
      dtype=jnp.float32,
      kernel_init=part.init(nn.initializers.lecun_normal(), part.EMBED,
                            part.HEADS),
      name=name,
      parent=module,
  )(inputs_BxKxE.astype(jnp.float32))


@dataclasses.dataclass(frozen=True)
class DeltaOptions(decaying_state.DecayOptions):
  """The linear-state options, with the chunk that is fastest for the delta
  rule's chunk loop (`delta_rule.chunked`): 32 tokens. Forward+backward of
  the recurrence at 2k tokens (8 heads of 64, 2-core CPU, huge pages, two
  runs): DeltaNet 0.066-0.071 s at 16, 0.066-0.068 s at 32, 0.074-0.082 s
  at 64; Gated DeltaNet 0.078-0.081, 0.070-0.075 and 0.084-0.087 s. Larger
  chunks also keep fewer states for the backward pass."""
  chunk_size: int = 32


@registry.register('deltanet')
class DeltaNet(base.Mechanism):
  """The delta rule with a data-dependent write strength β per head.

  Parameters: the frame's, plus 'beta' (kernel [E, H]) and those of the
  options (`conv_norm_gate`). Decoding state (a dict, batch-leading for
  beam search): 'state' [B, H, D, D], M of the tokens so far, and with a
  short convolution 'conv', the last inputs it reads; cross-attention keeps
  M of the memory's real tokens.
  """

  # chunk_size, form and the options of conv_norm_gate.
  Options = DeltaOptions
  RESUMABLE_FIELDS = decaying_state.RESUMABLE_FIELDS
  TEST_OPTIONS = decaying_state.TEST_OPTIONS
  # q and k are L2-normalised by the mechanism.
  capabilities = dataclasses.replace(decaying_state.CAPABILITIES,
                                     qk_norm=False)

  def key_extras(self, module, inputs_kv_BxKxE, kv_positions_BxK, rotate,
                 num_heads):
    del kv_positions_BxK, rotate
    logits_BxKxH = gate_projection(module, inputs_kv_BxKxE, num_heads,
                                    'beta')
    return {'beta': jax.nn.sigmoid(logits_BxKxH)}

  def log_alpha(self, key_extras):
    """log α [B, K, H], or None: DeltaNet keeps its state undecayed, and
    every form then skips the decay terms rather than computing exp(0)."""
    del key_extras
    return None

  def reference_gates(self, params, inputs_kv_BxKxE):
    """(β, log α) [B, K, H] from the paper's equations."""
    x = inputs_kv_BxKxE.astype(jnp.float32)
    logits = jnp.einsum('bke,eh->bkh', x, params['beta']['kernel'])
    beta = 1.0 / (1.0 + jnp.exp(-logits))
    return beta, jnp.zeros_like(beta)

  def _heads(self, query_BxQxHxD, key_BxKxGxD, value_BxKxGxD, num_heads):
    """float32 L2-normalised queries and keys, values, all with H heads."""
    query = (None if query_BxQxHxD is None
             else head_norms.l2_normalise(query_BxQxHxD))
    key = head_norms.l2_normalise(
        base.repeat_kv_heads(key_BxKxGxD, num_heads))
    value = base.repeat_kv_heads(value_BxKxGxD, num_heads).astype(
        jnp.float32)
    return query, key, value

  def _gates(self, key_extras, real_BxK):
    """(β, log α or None) [B, K, H]; padding neither writes nor decays."""
    real = real_BxK[..., None]
    log_alpha = self.log_alpha(key_extras)
    return (jnp.where(real, key_extras['beta'], 0.0),
            None if log_alpha is None else jnp.where(real, log_alpha, 0.0))

  def attend(self, module, inputs):
    inputs = conv_norm_gate.convolve(module, self.options, inputs)
    query, key, value = self._heads(inputs.query_BxQxHxD, inputs.key_BxKxGxD,
                                    inputs.value_BxKxGxD, inputs.num_heads)
    mask = inputs.mask
    beta, log_alpha = self._gates(inputs.key_extras,
                                  mask.kv_segment_ids_BxK > 0)
    chunk = self.options.chunk_size
    if not inputs.self_attention:
      return delta_rule.cross(query, key, value, beta, log_alpha,
                              mask.q_segment_ids_BxQ, mask.kv_segment_ids_BxK,
                              chunk)
    if inputs.causal and self.options.form == 'recurrent':
      return delta_rule.recurrent(query, key, value, beta, log_alpha,
                                  mask.kv_segment_ids_BxK)[0]
    if inputs.causal:
      out, _ = delta_rule.chunked(query, key, value, beta, log_alpha,
                                  mask.kv_segment_ids_BxK, chunk)
      return out
    return delta_rule.bidirectional(query, key, value, beta, log_alpha,
                                    mask.kv_segment_ids_BxK, chunk)

  def finish(self, module, out_BxQxHxD, inputs_q_BxQxE):
    return conv_norm_gate.finish(module, self.options, out_BxQxHxD,
                                 inputs_q_BxQxE)

  def reference(self, params, inputs, path=()):
    del path
    heads = conv_norm_gate.reference_convolve(params, self.options, inputs)
    out = self._reference_recurrence(params, heads)
    return conv_norm_gate.reference_finish(params, self.options, out,
                                           inputs.inputs_q_BxQxE)

  def _reference_recurrence(self, params, inputs):
    """Token-by-token scans of the recurrence (Yang et al. 2024, eq. 1-2)."""
    num_heads = inputs.query_BxQxHxD.shape[2]

    def unit(x):
      x = x.astype(jnp.float32)
      return x / jnp.sqrt(jnp.sum(x * x, -1, keepdims=True) + 1e-6)

    query = unit(inputs.query_BxQxHxD)
    key = unit(base.repeat_kv_heads(inputs.key_BxKxGxD, num_heads))
    value = base.repeat_kv_heads(inputs.value_BxKxGxD, num_heads).astype(
        jnp.float32)
    q_seg = inputs.mask.q_segment_ids_BxQ
    kv_seg = inputs.mask.kv_segment_ids_BxK
    beta, log_alpha = self.reference_gates(params, inputs.inputs_kv_BxKxE)
    beta = beta * (kv_seg > 0)[..., None]
    log_alpha = log_alpha * (kv_seg > 0)[..., None]
    if inputs.self_attention:
      forward, _ = delta_rule.recurrent(query, key, value, beta, log_alpha,
                                        kv_seg)
      if inputs.causal:
        return forward
      backward, _ = delta_rule.recurrent(query, key, value, beta, log_alpha,
                                         kv_seg, reverse=True,
                                         read_before_write=True)
      return forward + backward
    _, states_BxKxHxDxD = delta_rule.recurrent(
        jnp.zeros_like(key), key, value, beta, log_alpha, kv_seg)
    # Query i reads the state after the last key of its segment.
    next_seg = jnp.pad(kv_seg[:, 1:], [(0, 0), (0, 1)], constant_values=-1)
    last_BxK = kv_seg != next_seg
    reads_BxQxK = ((q_seg[:, :, None] == kv_seg[:, None, :])
                   & last_BxK[:, None, :] & (kv_seg > 0)[:, None, :])
    return jnp.einsum('bqk,bkhde,bqhd->bqhe', reads_BxQxK.astype(jnp.float32),
                      states_BxKxHxDxD, query)

  def initial_state(self, module, key_BxKxGxD, value_BxKxGxD, num_heads):
    del module
    return decaying_state.initial_state(self.options, key_BxKxGxD,
                                        value_BxKxGxD, num_heads)

  def step(self, module, state, query_Bx1xHxD, key_Bx1xGxD, value_Bx1xGxD,
           key_extras):
    query, key, value, state = conv_norm_gate.convolve_step(
        module, self.options, state, query_Bx1xHxD, key_Bx1xGxD,
        value_Bx1xGxD)
    query, key, value = self._heads(query, key, value, query.shape[2])
    log_alpha = self.log_alpha(key_extras)
    out_BxHxD, new_state = delta_rule.recurrent_step(
        state['state'], query[:, 0], key[:, 0], value[:, 0],
        key_extras['beta'][:, 0],
        None if log_alpha is None else log_alpha[:, 0])
    return out_BxHxD[:, None], {**state, 'state': new_state}

  def summarise(self, module, key_BxKxGxD, value_BxKxGxD, kv_segment_ids_BxK,
                num_heads, key_extras):
    del module
    _, key, value = self._heads(None, key_BxKxGxD, value_BxKxGxD, num_heads)
    beta, log_alpha = self._gates(key_extras, kv_segment_ids_BxK > 0)
    # Padding is the identity on the state, so the row's final state is
    # that of its real tokens (one sentence per decoded row).
    _, state = delta_rule.chunked(
        jnp.zeros_like(key), key, value, beta, log_alpha,
        jnp.ones_like(kv_segment_ids_BxK), self.options.chunk_size)
    return {'state': state}

  def read(self, module, summary, query_BxQxHxD):
    del module
    return jnp.einsum('bqhk,bhkv->bqhv',
                      head_norms.l2_normalise(query_BxQxHxD),
                      summary['state'])
