"""Initialisers of decay and gate parameters, shared by `mamba2`,
`gated_deltanet` and `forgetting`. Not a registered mechanism.

Mamba-2's decay a_t = exp(-Δ_t A) starts from A ~ U[1, 16] and a step
Δ = softplus(b_Δ) log-uniform in [0.001, 0.1], floored at 1e-4 (Dao & Gu,
2024, and the official mamba_ssm code); Gated DeltaNet's α_t reuses it
(Yang et al., 2025).
"""

import jax
import jax.numpy as jnp
import numpy as np

# Mamba-2's ranges for A and for the step Δ (dt) that the bias starts from.
A_RANGE = (1.0, 16.0)
DT_RANGE = (1e-3, 1e-1)
DT_FLOOR = 1e-4


def inverse_softplus(y):
  """x with softplus(x) = log(1 + e^x) = y, for y > 0: y + log(1 - e^-y),
  which equals log(e^y - 1) without overflow at large y."""
  return y + jnp.log(-jnp.expm1(-y))


def mamba2_a_log(key, shape, dtype=jnp.float32):
  """log A with A ~ U[A_RANGE], per head ([H])."""
  return jnp.log(jax.random.uniform(key, shape, dtype, *A_RANGE))


def mamba2_dt_bias(key, shape, dtype=jnp.float32):
  """b with softplus(b) = Δ, Δ log-uniform in DT_RANGE and at least
  DT_FLOOR, per head ([H])."""
  low, high = np.log(DT_RANGE[0]), np.log(DT_RANGE[1])
  dt = jnp.maximum(
      jnp.exp(jax.random.uniform(key, shape, dtype, low, high)), DT_FLOOR)
  return inverse_softplus(dt)
