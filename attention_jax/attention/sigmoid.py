"""Sigmoid attention (Ramapuram et al., 2024, "Theory, Analysis, and Best
Practices for Sigmoid Self-Attention", ICLR 2025).

Each weight is an independent sigmoid of its logit, with no normalisation
over keys:

  out_i = sum_j sigmoid(q_i·k_j / sqrt(d) + b) v_j

over the keys j that query i may see. The paper's bias b = -log(n) keeps the
output's norm from growing with the number of keys n (weights start near
1/n, as a uniform softmax's would); here n is counted per query from its
mask: the sentence length in bidirectional and cross-attention, the prefix
length i + 1 in causal attention and in cached decoding, so packing and
decoding see the same n as a single sentence's full pass.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from attention_jax.attention import base
from attention_jax.attention import registry
from attention_jax.attention import softmax


@dataclasses.dataclass(frozen=True)
class SigmoidOptions:
  # b = bias - log(n), n the keys the query may see (the paper's choice);
  # False: b = bias for every query, the paper's fixed-bias ablation.
  # (Two fields rather than a None default: a None field cannot be set by a
  # command-line override.)
  subtract_log_n: bool = True
  bias: float = 0.0

  def __post_init__(self):
    if not math.isfinite(self.bias):
      raise ValueError(f'bias={self.bias} must be finite.')


@registry.register('sigmoid')
class Sigmoid(base.Mechanism):
  """sum_j sigmoid(q k^T / sqrt(d) + score bias + b) v_j, unnormalised."""

  Options = SigmoidOptions
  # Scores as softmax attention's, with these differences.
  capabilities = dataclasses.replace(
      softmax.FAMILY_CAPABILITIES,
      # No softmax denominator for a sink logit to join.
      sink=False)

  def _bias(self, mask_Bx1xQxK):
    """b, float32, broadcastable to [B, H, Q, K]."""
    if not self.options.subtract_log_n:
      return jnp.float32(self.options.bias)
    seen_Bx1xQx1 = jnp.sum(mask_Bx1xQxK, -1, keepdims=True, dtype=jnp.int32)
    # A padding query sees no key; n = 1 keeps its (unread) bias finite.
    return self.options.bias - jnp.log(
        jnp.maximum(seen_Bx1xQx1, 1).astype(jnp.float32))

  def attend(self, module, inputs):
    del module
    # The sigmoid in float32 keeps bfloat16 training stable, as softmax's.
    logits_BxHxQxK, value_BxKxHxD = softmax.biased_logits(inputs)
    mask_Bx1xQxK = inputs.mask.dense()
    weights_BxHxQxK = jnp.where(
        mask_Bx1xQxK,
        jax.nn.sigmoid(logits_BxHxQxK + self._bias(mask_Bx1xQxK)), 0.0)
    return softmax.weighted_values(weights_BxHxQxK, value_BxKxHxD,
                                   inputs.dropout, inputs.capture_weights)

  def reference(self, params, inputs, path=()):
    return softmax.reference_from_weights(self, params, inputs, path)

  def reference_weights(self, params, inputs, path=()):
    del params, path
    # x[b, h, i, j] = q_i · k_j / sqrt(d) (+ score bias).
    x, _ = softmax.reference_logits(inputs)
    allowed = base.reference_mask(inputs)
    b = self.options.bias
    if self.options.subtract_log_n:
      n = allowed.sum(-1, keepdims=True)
      b = b - jnp.log(jnp.where(n > 0, n, 1))
    return jnp.where(allowed, 1.0 / (1.0 + jnp.exp(-(x + b))), 0.0)
