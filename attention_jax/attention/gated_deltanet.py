"""Gated DeltaNet (Yang et al., 2025, ICLR, "Gated Delta Networks:
Improving Mamba2 with Delta Rule").

The delta rule of `deltanet.py` with a data-dependent decay α_t in (0, 1]
per head, which can clear the state quickly (α → 0) as well as edit it
(M = Sᵀ, key by value; see `delta_rule.py`):

  M_t = α_t (I − β_t k_t k_tᵀ) M_{t−1} + β_t k_t v_tᵀ,   o_t = M_tᵀ q_t.

As in the official code, α_t = exp(g_t) with Mamba-2's parameterisation
g_t = −exp(A_log) · softplus(x_t W_a + dt_bias) per head (W_a: E x H, no
bias); A = exp(A_log) starts uniform in [1, 16] and dt_bias at the inverse
softplus of a dt log-uniform in [0.001, 0.1], so the initial α spans
about 0.2 to 0.999 across heads. β, the L2-normalised q and k, the places
(encoder, cross-attention), the options (the paper's short convolution,
per-head output RMSNorm and swish output gate: o = RMSNorm(o) ⊙ swish(x W_g),
off by default) and the absence of a position scheme are DeltaNet's.
"""

import jax
import jax.numpy as jnp

from attention_jax import partitioning as part
from attention_jax.attention import deltanet
from attention_jax.attention import gate_inits
from attention_jax.attention import registry

@registry.register('gated_deltanet')
class GatedDeltaNet(deltanet.DeltaNet):
  """The gated delta rule: DeltaNet with a per-head decay α from the inputs.

  Parameters: DeltaNet's, plus 'alpha' (kernel [E, H]), 'a_log' [H] and
  'dt_bias' [H]. Decoding state as DeltaNet's.
  """

  def key_extras(self, module, inputs_kv_BxKxE, kv_positions_BxK, rotate,
                 num_heads):
    extras = super().key_extras(module, inputs_kv_BxKxE, kv_positions_BxK,
                                rotate, num_heads)
    logits_BxKxH = deltanet.gate_projection(
        module, inputs_kv_BxKxE, num_heads, 'alpha')
    a_log_H = module.param(
        'a_log', part.init(gate_inits.mamba2_a_log, part.HEADS),
        (num_heads,), jnp.float32)
    dt_bias_H = module.param(
        'dt_bias', part.init(gate_inits.mamba2_dt_bias, part.HEADS),
        (num_heads,), jnp.float32)
    extras['log_alpha'] = -jnp.exp(a_log_H)[None, None] * jax.nn.softplus(
        logits_BxKxH + dt_bias_H[None, None])
    return extras

  def log_alpha(self, key_extras):
    return key_extras['log_alpha']

  def reference_gates(self, params, inputs_kv_BxKxE):
    beta, _ = super().reference_gates(params, inputs_kv_BxKxE)
    x = inputs_kv_BxKxE.astype(jnp.float32)
    logits = (jnp.einsum('bke,eh->bkh', x, params['alpha']['kernel'])
              + params['dt_bias'][None, None])
    g = -jnp.exp(params['a_log'])[None, None] * jnp.log1p(jnp.exp(logits))
    return beta, g
