"""Softpick attention (Zuhri et al., 2025, "Softpick: No Attention Sink, No
Massive Activations with Rectified Softmax").

Softmax's exp(x) becomes exp(x) - 1, rectified in the numerator and taken in
absolute value in the denominator:

  w_ij = ReLU(e^{x_ij} - 1) / (sum_k |e^{x_ik} - 1| + eps)
  out_i = sum_j w_ij v_j,   x_ij = q_i·k_j / sqrt(d) (+ score bias)

with j and k over the keys query i may see. A key with a non-positive logit
gets no weight, and a row's weights sum to at most one (to nothing when
every logit is negative), so a head need not dump weight on a sink token.
Computed, as in the paper, with both terms scaled by e^{-m}, so that no
exponential exceeds 1, and eps in the scaled denominator, as in the
authors' code:

  w_ij = ReLU(e^{x_ij - m} - e^{-m}) / (sum_k |e^{x_ik - m} - e^{-m}| + eps)

Here m = max(0, max_k x_ik): the authors' m = max_k x_ik would overflow
e^{-m} when every logit of a row is below about -88 (ALiBi far back, say).
"""

import dataclasses

import jax
import jax.numpy as jnp

from attention_jax.attention import base
from attention_jax.attention import registry
from attention_jax.attention import softmax


@dataclasses.dataclass(frozen=True)
class SoftpickOptions:
  # Added to the scaled denominator. The authors' reference implementation
  # uses 1e-8 (their Triton kernel 1e-6); it matters only when every logit
  # of a row is exactly 0, and keeps that row's weights and gradients finite.
  epsilon: float = 1e-8

  def __post_init__(self):
    if not self.epsilon > 0:
      raise ValueError(f'epsilon={self.epsilon} must be positive.')


def softpick_weights(logits_BxHxQxK, mask, epsilon: float):
  """Softpick over the keys each query may see, in float32.

  Args:
    logits_BxHxQxK: float32 logits.
    mask: boolean, broadcastable to the logits; True where a query may
      attend to a key.
    epsilon: added to the denominator.

  Returns:
    Weights [B, H, Q, K], zero at masked keys and non-positive logits.
  """
  # A masked key must be left out of the denominator, not given a logit of
  # -inf (whose |e^-inf - 1| = 1 would count). Setting it to 0 leaves m
  # unchanged, as m >= 0.
  logits_BxHxQxK = jnp.where(mask, logits_BxHxQxK, 0.0)
  peak_BxHxQx1 = jnp.maximum(jnp.max(logits_BxHxQxK, -1, keepdims=True), 0.0)
  shifted_BxHxQxK = jnp.where(
      mask, jnp.exp(logits_BxHxQxK - peak_BxHxQx1) - jnp.exp(-peak_BxHxQx1),
      0.0)
  total_BxHxQx1 = jnp.sum(jnp.abs(shifted_BxHxQxK), -1, keepdims=True)
  return jax.nn.relu(shifted_BxHxQxK) / (total_BxHxQx1 + epsilon)


@registry.register('softpick')
class Softpick(base.Mechanism):
  """sum_j softpick(q k^T / sqrt(d) + score bias)_j v_j."""

  Options = SoftpickOptions
  # Scores as softmax attention's, with these differences.
  capabilities = dataclasses.replace(
      softmax.FAMILY_CAPABILITIES,
      # Its denominator sums |e^x - 1|, not e^x: a sink logit has no place.
      sink=False)

  def attend(self, module, inputs):
    del module
    logits_BxHxQxK, value_BxKxHxD = softmax.biased_logits(inputs)
    weights_BxHxQxK = softpick_weights(
        logits_BxHxQxK, inputs.mask.dense(), self.options.epsilon)
    return softmax.weighted_values(weights_BxHxQxK, value_BxKxHxD,
                                   inputs.dropout, inputs.capture_weights)

  def reference(self, params, inputs, path=()):
    return softmax.reference_from_weights(self, params, inputs, path)

  def reference_weights(self, params, inputs, path=()):
    del params, path
    # x[b, h, i, j] = q_i · k_j / sqrt(d) (+ score bias).
    x, _ = softmax.reference_logits(inputs)
    allowed = base.reference_mask(inputs)
    # m_i = max(0, max over the allowed keys of x_ij).
    m = jnp.max(jnp.where(allowed, x, -jnp.inf), -1, keepdims=True)
    m = jnp.where(m > 0, m, 0.0)
    # e^{x_ij - m_i} - e^{-m_i}, i.e. e^{-m_i} (e^{x_ij} - 1), allowed keys.
    d = jnp.where(allowed, jnp.exp(jnp.where(allowed, x, 0.0) - m)
                  - jnp.exp(-m), 0.0)
    numerator = jnp.where(d > 0, d, 0.0)
    denominator = jnp.abs(d).sum(-1, keepdims=True) + self.options.epsilon
    return numerator / denominator
