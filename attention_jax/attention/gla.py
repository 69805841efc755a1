"""Gated linear attention (Yang et al., 2024, "Gated Linear Attention
Transformers with Hardware-Efficient Training", ICML 2024).

Each head keeps S_t = Diag(alpha_t) S_{t-1} + k_t^T v_t and outputs
o_t = q_t S_t (queries scaled by d^(-1/2), as flash-linear-attention
does), with a data-dependent decay per key channel from the token's input
x_t through a low-rank projection:

  alpha_t = sigmoid(x_t W_1 W_2 + b)^(1/tau),   W_1: E x 16,
  W_2: 16 x (H d_k), tau = 16,

so log alpha_t = log_sigmoid(x_t W_1 W_2 + b) / tau, in float32. tau pulls
the decays towards 1 (sigmoid 1/2 gives 0.958). As in the official code
(flash-linear-attention), W_1 and W_2 are Glorot-uniform with gain
2^(-2.5) and b starts at 0.

The key extra is the low-rank code x_t W_1 ([B, K, 16]); W_2 and b are
applied where the decays are used (`log_decay`), since d_k is known only
from the projected keys. The encoder's bidirectional and the
cross-attention forms are those of `decay_scan`. The paper's layer around
the recurrence is a set of options (`conv_norm_gate`, off by default): the
short convolution on q, k and v (`conv_size=4`), the per-head RMSNorm
(`output_norm`) and the output gate o ⊙ swish(x W_g)
(`output_gate='swish'`).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import partitioning as part
from attention_jax.attention import decaying_state
from attention_jax.attention import registry

GATE_RANK = 16
TAU = 16.0


def _glorot(out_axis):
  """Glorot-uniform with gain 2^(-2.5) (a variance scale of gain^2)."""
  return nn.initializers.variance_scaling(2.0 ** -5, 'fan_avg', 'uniform',
                                          in_axis=0, out_axis=out_axis)


@registry.register('gla')
class GatedLinear(decaying_state.DecayingState):
  """GLA with per-channel decays from a low-rank gate.

  Parameters: the frame's, plus 'gate_down' [E, 16], 'gate_up'
  [16, H, D], 'gate_bias' [H, D] and those of the options
  (`conv_norm_gate`).
  """

  def key_extras(self, module, inputs_kv_BxKxE, kv_positions_BxK, rotate,
                 num_heads):
    del kv_positions_BxK, rotate, num_heads
    down_ExR = module.param(
        'gate_down', part.init(_glorot(1), part.EMBED, None),
        (inputs_kv_BxKxE.shape[-1], GATE_RANK), jnp.float32)
    # In float32: the decays multiply over thousands of tokens.
    return {'gate_code': inputs_kv_BxKxE.astype(jnp.float32) @ down_ExR}

  def log_decay(self, module, key_extras, num_heads, head_dim):
    up_RxHxD = module.param(
        'gate_up',
        part.init(_glorot((1, 2)), None, part.HEADS, part.HEAD_DIM),
        (GATE_RANK, num_heads, head_dim), jnp.float32)
    bias_HxD = module.param(
        'gate_bias', part.init(nn.initializers.zeros, part.HEADS,
                               part.HEAD_DIM),
        (num_heads, head_dim), jnp.float32)
    logits_BxKxHxD = jnp.einsum('bkr,rhd->bkhd', key_extras['gate_code'],
                                up_RxHxD) + bias_HxD[None, None]
    return jax.nn.log_sigmoid(logits_BxKxHxD) / TAU

  def reference_extras(self, params, inputs_kv_BxKxE, num_heads):
    del num_heads
    x = inputs_kv_BxKxE.astype(jnp.float32)
    logits = (jnp.einsum('bke,er,rhd->bkhd', x, params['gate_down'],
                         params['gate_up'])
              + params['gate_bias'][None, None])
    alpha = (1.0 / (1.0 + jnp.exp(-logits))) ** (1.0 / TAU)
    return {'log_decay': jnp.log(alpha)}

  def queries(self, query_BxQxHxD):
    return query_BxQxHxD.astype(jnp.float32) * query_BxQxHxD.shape[-1] ** -0.5
