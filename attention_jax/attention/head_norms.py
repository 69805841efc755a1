"""Normalisations of each head's vectors over its D channels, shared by the
frame's QK-norm, `cosine`, `differential`, the delta rule and the output
norm of `conv_norm_gate`. Not a registered mechanism."""

import jax
import jax.numpy as jnp


def l2_normalise(x_BxLxHxD, eps: float = 1e-6):
  """x / sqrt(‖x‖² + eps) over the last axis, float32 [B, L, H, D]."""
  x = x_BxLxHxD.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.sum(x * x, -1, keepdims=True) + eps)


def rms_normalise(x_BxLxHxD, scale_D, eps: float):
  """RMSNorm over the last axis with a learned scale shared by the heads:
  x / sqrt(mean(x²) + eps) ⊙ scale, [B, L, H, D] (x's dtype promoted with
  the scale's)."""
  x = x_BxLxHxD * jax.lax.rsqrt(
      jnp.mean(x_BxLxHxD * x_BxLxHxD, -1, keepdims=True) + eps)
  return x * scale_D[None, None, None]
