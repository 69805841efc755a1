"""The short convolution, output norm and output gate of the gated linear
and delta-rule layers, shared by `decaying_state` (retnet, gla, mamba2) and
`deltanet` (deltanet, gated_deltanet).

The papers' layers put the recurrence between three small parts, each an
option here (`ConvNormGateOptions`, mixed into each family's options; all
off by default):

  * Short convolution (`conv_size` = c; the papers use 4): a causal
    depthwise convolution over time of each projected q, k and v, followed
    by SiLU (GLA, Yang et al. 2024 ICML; Gated DeltaNet, Yang et al. 2025
    ICLR; Mamba-2, Dao & Gu 2024, on its x, B and C):

      x'_t = SiLU(sum_{w=0}^{c-1} W_{c-1-w} ⊙ x_{t-w}),   W: [c, heads, D],

    one kernel per channel, where a tap reaches only tokens of x_t's own
    segment (a packed sentence never sees the one before it; padding
    contributes nothing and its own output is 0). In decoding the state
    keeps the last c - 1 projected inputs of each row. It acts in
    self-attention, causal and encoder alike (the encoder keeps the causal
    taps). Not in cross-attention: the decoder's queries would need a
    convolution state in cross-attention decoding, whose `read` keeps none,
    and the papers define no cross-attention form.
  * Output norm (`output_norm`): RMSNorm of each head's output over its D
    channels with a learned scale of size D shared by the heads (GLA's and
    Gated DeltaNet's per-head RMSNorm; RetNet's per-head group norm, Sun et
    al. 2023, without its mean; Mamba-2's gated RMSNorm normalises after
    the gate, here before it).
  * Output gate (`output_gate`): o ⊙ swish(x W_g) ('swish': GLA, RetNet,
    Gated DeltaNet) or o ⊙ sigmoid(x W_g) ('sigmoid'), W_g: E x H x D
    without bias, x the layer's query-side input.

With both on, in every place: o = RMSNorm(o) ⊙ swish(x W_g), computed by the
mechanism's `finish` (see base.py) before the frame's output projection.
`reference_convolve` and `reference_finish` are written from these
definitions (an explicit masked sum over each token's window) and share
nothing with the functions the mechanisms run.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import partitioning as part
from attention_jax.attention import base
from attention_jax.attention import head_norms

OUTPUT_GATES = ('none', 'swish', 'sigmoid')
NORM_EPS = 1e-5
# The projections the short convolution acts on, as AttentionInputs fields.
_CONVOLVED = {'query': 'query_BxQxHxD', 'key': 'key_BxKxGxD',
              'value': 'value_BxKxGxD'}


@dataclasses.dataclass(frozen=True)
class ConvNormGateOptions:
  """Options of the layer around the recurrence (see the module docstring);
  model fields, as each adds parameters."""

  # Taps of the causal depthwise convolution on q, k and v; 0: none (the
  # papers use 4).
  conv_size: int = 0
  # One of OUTPUT_GATES: o ⊙ swish(x W_g) or o ⊙ sigmoid(x W_g).
  output_gate: str = 'none'
  # RMSNorm of each head's output with a learned scale of size head_dim.
  output_norm: bool = False

  def __post_init__(self):
    if self.conv_size != 0 and self.conv_size < 2:
      raise ValueError(
          f'conv_size={self.conv_size} must be 0 (no convolution) or at '
          'least 2 (the papers use 4).')
    if self.output_gate not in OUTPUT_GATES:
      raise ValueError(
          f'output_gate={self.output_gate!r} is not one of {OUTPUT_GATES}.')


def _kernel(module: nn.Module, name: str, conv_size: int, heads: int,
            depth: int):
  """The kernel of projection `name`, [c, heads, D] float32, drawn as a
  torch Conv1d's: U(±1/sqrt(c))."""
  init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform',
                                          in_axis=0, out_axis=(1, 2))
  return module.param(f'{name}_conv',
                      part.init(init, None, part.HEADS, part.HEAD_DIM),
                      (conv_size, heads, depth), jnp.float32)


def short_conv(x_BxLxHxD, kernel_CxHxD, segment_ids_BxL):
  """SiLU of the causal depthwise convolution within segments.

  Args:
    x_BxLxHxD: projected heads.
    kernel_CxHxD: float32 taps; the last one weighs the token itself.
    segment_ids_BxL: contiguous runs of equal ids; 0 is padding.

  Returns:
    float32 [B, L, H, D]; 0 at padding.
  """
  conv_size, length = kernel_CxHxD.shape[0], x_BxLxHxD.shape[1]
  x = x_BxLxHxD.astype(jnp.float32)
  total = jnp.zeros_like(x)
  for back in range(min(conv_size, length)):
    # Token t - back, and whether it belongs to token t's sentence.
    earlier = jnp.pad(x, [(0, 0), (back, 0), (0, 0), (0, 0)])[:, :length]
    earlier_seg = jnp.pad(segment_ids_BxL, [(0, 0), (back, 0)])[:, :length]
    same_BxL = (earlier_seg == segment_ids_BxL) & (segment_ids_BxL > 0)
    tap_HxD = kernel_CxHxD[conv_size - 1 - back]
    total += jnp.where(same_BxL[..., None, None],
                       tap_HxD[None, None] * earlier, 0.0)
  return jax.nn.silu(total)


def convolve(module: nn.Module, options: ConvNormGateOptions,
             inputs: base.AttentionInputs) -> base.AttentionInputs:
  """`inputs` with q, k and v convolved (self-attention with `conv_size`);
  parameters '{query,key,value}_conv' [c, H or G, D]."""
  if not options.conv_size or not inputs.self_attention:
    return inputs
  segment_ids = inputs.mask.kv_segment_ids_BxK
  return dataclasses.replace(inputs, **{
      field: short_conv(x, _kernel(module, name, options.conv_size,
                                   *x.shape[2:]), segment_ids)
      for name, field in _CONVOLVED.items()
      if (x := getattr(inputs, field)) is not None})


def initial_conv_state(options: ConvNormGateOptions, query_heads: int,
                       key_BxKxGxD, value_BxKxGxD) -> dict:
  """{} without a convolution; else {'conv': {name: zeros [B, c - 1, heads,
  D]}}, the last c - 1 projected inputs (none yet)."""
  if not options.conv_size:
    return {}
  batch, _, kv_heads, depth = key_BxKxGxD.shape
  past = options.conv_size - 1
  return {'conv': {
      'query': jnp.zeros((batch, past, query_heads, depth), jnp.float32),
      'key': jnp.zeros((batch, past, kv_heads, depth), jnp.float32),
      'value': jnp.zeros((batch, past, kv_heads, value_BxKxGxD.shape[-1]),
                         jnp.float32)}}


def convolve_step(module: nn.Module, options: ConvNormGateOptions,
                  state: dict, query_Bx1xHxD, key_Bx1xGxD, value_Bx1xGxD):
  """One decoding step of the convolution.

  Args:
    state: the mechanism's decoding state, with 'conv' from
      `initial_conv_state` when there is a convolution.

  Returns:
    (query, key, value, state): the step's convolved heads (unchanged
    without a convolution) and `state` with the window moved on by one.
  """
  if not options.conv_size:
    return query_Bx1xHxD, key_Bx1xGxD, value_Bx1xGxD, state
  convolved, kept = {}, {}
  for name, x in (('query', query_Bx1xHxD), ('key', key_Bx1xGxD),
                  ('value', value_Bx1xGxD)):
    window_BxCxHxD = jnp.concatenate(
        [state['conv'][name], x.astype(jnp.float32)], 1)
    kernel = _kernel(module, name, options.conv_size, *x.shape[2:])
    convolved[name] = jax.nn.silu(
        jnp.sum(kernel[None] * window_BxCxHxD, 1, keepdims=True))
    kept[name] = window_BxCxHxD[:, 1:]
  return (convolved['query'], convolved['key'], convolved['value'],
          {**state, 'conv': kept})


def finish(module: nn.Module, options: ConvNormGateOptions, out_BxQxHxD,
           inputs_q_BxQxE):
  """RMSNorm(o) ⊙ gate(x W_g) as the options ask; float32 [B, Q, H, D].

  Parameters: 'output_norm' [D] and 'output_gate' (kernel [E, H, D]).
  """
  out = out_BxQxHxD.astype(jnp.float32)
  num_heads, depth = out.shape[2:]
  if options.output_norm:
    scale_D = module.param('output_norm',
                           part.init(nn.initializers.ones, part.HEAD_DIM),
                           (depth,), jnp.float32)
    out = head_norms.rms_normalise(out, scale_D, NORM_EPS)
  if options.output_gate != 'none':
    logits = nn.DenseGeneral(
        features=(num_heads, depth),
        use_bias=False,
        dtype=inputs_q_BxQxE.dtype,
        kernel_init=part.init(nn.initializers.xavier_uniform(), part.EMBED,
                              part.HEADS, part.HEAD_DIM),
        name='output_gate',
        parent=module,
    )(inputs_q_BxQxE).astype(jnp.float32)
    gate = (jax.nn.silu(logits) if options.output_gate == 'swish'
            else jax.nn.sigmoid(logits))
    out = out * gate
  return out


def reference_convolve(params, options: ConvNormGateOptions,
                       inputs: base.AttentionInputs) -> base.AttentionInputs:
  """`convolve` from its definition: x'_t = SiLU(sum over the tokens s of
  t's segment with t - c < s <= t of W_{c-1-(t-s)} ⊙ x_s)."""
  if not options.conv_size or not inputs.self_attention:
    return inputs
  conv_size = options.conv_size
  seg = inputs.mask.kv_segment_ids_BxK
  length = seg.shape[1]
  offset_TxS = jnp.arange(length)[:, None] - jnp.arange(length)[None, :]
  in_window_BxTxS = ((offset_TxS >= 0) & (offset_TxS < conv_size))[None] & (
      (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] > 0))
  tap_TxS = jnp.clip(conv_size - 1 - offset_TxS, 0, conv_size - 1)

  def conv(name, x_BxLxHxD):
    weights_TxSxHxD = params[f'{name}_conv'][tap_TxS]
    summed = jnp.einsum('bts,tshd,bshd->bthd',
                        in_window_BxTxS.astype(jnp.float32), weights_TxSxHxD,
                        x_BxLxHxD.astype(jnp.float32))
    return summed / (1.0 + jnp.exp(-summed))

  return dataclasses.replace(inputs, **{
      field: conv(name, x) for name, field in _CONVOLVED.items()
      if (x := getattr(inputs, field)) is not None})


def reference_finish(params, options: ConvNormGateOptions, out_BxQxHxD,
                     inputs_q_BxQxE):
  """`finish` from its definition, float32 [B, Q, H, D]."""
  out = out_BxQxHxD.astype(jnp.float32)
  if options.output_norm:
    rms = jnp.sqrt(jnp.mean(jnp.square(out), -1, keepdims=True) + NORM_EPS)
    out = out / rms * params['output_norm'][None, None, None]
  if options.output_gate != 'none':
    logits = jnp.einsum('bqe,ehd->bqhd', inputs_q_BxQxE.astype(jnp.float32),
                        params['output_gate']['kernel'])
    sigmoid = 1.0 / (1.0 + jnp.exp(-logits))
    out = out * (logits * sigmoid if options.output_gate == 'swish'
                 else sigmoid)
  return out
