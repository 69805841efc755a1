"""Mamba-2's state space duality layer (Dao & Gu, 2024, "Transformers are
SSMs: Generalized Models and Efficient Algorithms Through Structured State
Space Duality"), as an attention mechanism.

SSD keeps h_t = exp(-Delta_t A) h_{t-1} + Delta_t B_t^T x_t per head and
outputs y_t = C_t h_t + D x_t, a scalar decay per head and token. Mapped
onto the frame's projections: C is the query, B the key and x the value
(head size = state size N = head dimension P = d), so

  S_t = a_t S_{t-1} + (Delta_t k_t)^T v_t,   o_t = q_t S_t + D_h v_t,
  a_t = exp(-Delta_t A_h),   Delta_t = softplus(x_t W_Delta + b_Delta),
  A_h = exp(A_log_h) > 0.

Delta_t, one scalar per head, scales the key (B) rather than the value:
the state is the same, and the skip D_h v_t reads the unscaled value as
Mamba's D x_t does. B and C are per head here (Mamba-2 shares them across
heads, ngroups = 1), and the queries are unscaled. Initialisation as in
the official code (mamba_ssm): A ~ U[1, 16]; softplus(b_Delta) log-uniform
in [0.001, 0.1] (floored at 1e-4); D = 1; W_Delta like a torch Linear,
U(+-1/sqrt(E)). Delta and log a are float32.

The encoder's bidirectional form (`decay_scan`: each direction's scan,
the token once) keeps the skip; cross-attention reads the memory's two
final states and has no skip, the query's token not being in the memory.
(Hydra, Hwang et al. 2024, is a bidirectional SSD with separate
parameters per direction; here both directions share them.) Options
(`conv_norm_gate`, off by default): the short convolution and its SiLU on
x, B and C (`conv_size=4`; the skip then reads the convolved x, as in
Mamba-2), the gate z (`output_gate='swish'`: o ⊙ swish(x W_z)) and the
RMSNorm (`output_norm`, per head and before the gate, where Mamba-2
normalises the gated output).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import partitioning as part
from attention_jax.attention import decaying_state
from attention_jax.attention import gate_inits
from attention_jax.attention import registry

@registry.register('mamba2')
class Mamba2(decaying_state.DecayingState):
  """SSD with scalar decays exp(-Delta_t A_h) and the D skip.

  Parameters: the frame's, plus 'delta' (kernel [E, H]), 'delta_bias' [H],
  'A_log' [H], 'D' [H] and those of the options (`conv_norm_gate`).
  """

  def key_extras(self, module, inputs_kv_BxKxE, kv_positions_BxK, rotate,
                 num_heads):
    del kv_positions_BxK, rotate
    width = inputs_kv_BxKxE.shape[-1]
    kernel_ExH = module.param(
        'delta', part.init(nn.initializers.variance_scaling(
            1 / 3, 'fan_in', 'uniform'), part.EMBED, part.HEADS),
        (width, num_heads), jnp.float32)
    bias_H = module.param(
        'delta_bias', part.init(gate_inits.mamba2_dt_bias, part.HEADS),
        (num_heads,), jnp.float32)
    a_log_H = module.param(
        'A_log', part.init(gate_inits.mamba2_a_log, part.HEADS),
        (num_heads,), jnp.float32)
    # In float32: the decays multiply over thousands of tokens.
    delta_BxKxH = jax.nn.softplus(
        inputs_kv_BxKxE.astype(jnp.float32) @ kernel_ExH + bias_H[None, None])
    return {'delta': delta_BxKxH,
            'log_decay': -delta_BxKxH * jnp.exp(a_log_H)[None, None]}

  def reference_extras(self, params, inputs_kv_BxKxE, num_heads):
    del num_heads
    x = inputs_kv_BxKxE.astype(jnp.float32)
    delta = jnp.log1p(jnp.exp(
        jnp.einsum('bke,eh->bkh', x, params['delta'])
        + params['delta_bias'][None, None]))
    return {'delta': delta,
            'log_decay': -delta * jnp.exp(params['A_log'])[None, None]}

  def keys(self, key_BxKxHxD, key_extras):
    return key_BxKxHxD.astype(jnp.float32) * key_extras['delta'][..., None]

  def skip(self, module, num_heads):
    return module.param('D', part.init(nn.initializers.ones, part.HEADS),
                        (num_heads,), jnp.float32)

  def reference_skip(self, params):
    return params['D']
