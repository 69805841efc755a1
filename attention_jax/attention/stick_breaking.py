"""Stick-breaking attention (Tan et al., 2025, "Scaling Stick-Breaking
Attention: An Efficient Implementation and In-depth Study", ICLR 2025).

Each query breaks a unit stick over the keys before it, nearest key first:
key j takes the fraction beta_ij = sigmoid(z_ij) of what the keys between it
and the query have left,

  z_ij = q_i·k_j / sqrt(d),
  A_ij = beta_ij · prod_{j<k<i} (1 - beta_ik),
  o_i  = sum_{j<i} A_ij v_j.

The weights sum to at most 1 and are not normalised: the rest of the stick
goes to no value, so a sentence's first token (no key before it) outputs 0.
The order of keys is built into the weights; the paper uses no position
scheme. The paper computes in log space, where 1 - sigmoid(z) =
exp(-softplus(z)):

  log A_ij = logsigmoid(z_ij) - sum_{j<k<i} softplus(z_ik).

Keys are those the mask lets the query see (its sentence; in decoding, the
filled cache slots), ordered by position, and only they break its stick. The
query's own token is not a key of the paper's sum; the authors' kernels
offer it as `attend_current` (it breaks the stick first: j and k run up to
i inclusive), an option here, off by default.

The paper defines causal self-attention only, so neither the encoder
(non-causal) nor cross-attention is offered. A score bias (ALiBi, T5
relative) adds to z and RoPE rotates q and k, as in softmax attention.
"""

import dataclasses

import jax
import jax.numpy as jnp

from attention_jax.attention import base
from attention_jax.attention import registry
from attention_jax.attention import softmax


@dataclasses.dataclass(frozen=True)
class StickBreakingOptions:
  # The query's own token breaks the stick first (the authors' kernel flag;
  # not in the paper's equations).
  attend_current: bool = False


def _breaks_stick(mask, attend_current: bool):
  """Keys that break each query's stick: visible and before it, [B,1,Q,K]."""
  before = (mask.kv_positions_BxK[:, None, :]
            <= mask.q_positions_BxQ[:, :, None] - (0 if attend_current else 1))
  return mask.dense() & before[:, None]


@registry.register('stick_breaking')
class StickBreaking(base.Mechanism):
  """sum_j sigmoid(z_ij) prod_{j<k<i} (1 - sigmoid(z_ik)) v_j, causal."""

  Options = StickBreakingOptions
  # Scores as softmax attention's, with these differences.
  capabilities = dataclasses.replace(
      softmax.FAMILY_CAPABILITIES, bidirectional=False,
      cross_attention=False, sink=False)

  def attend(self, module, inputs):
    del module
    logits_BxHxQxK, value_BxKxHxD = softmax.biased_logits(inputs)
    breaks_Bx1xQxK = _breaks_stick(inputs.mask, self.options.attend_current)
    log_left_BxHxQxK = jnp.where(breaks_Bx1xQxK,
                                 jax.nn.softplus(logits_BxHxQxK), 0.0)
    # -log of what the keys after j (nearer the query) leave: a reverse
    # cumulative sum of non-negative terms, shifted by one key rather than
    # subtracting key j's own term, so no large partial sums cancel and
    # float32 keeps its relative precision at any length.
    tail_BxHxQxK = jax.lax.cumsum(log_left_BxHxQxK, axis=3, reverse=True)
    nearer_BxHxQxK = jnp.pad(tail_BxHxQxK[..., 1:],
                             [(0, 0)] * 3 + [(0, 1)])
    log_weights = jax.nn.log_sigmoid(logits_BxHxQxK) - nearer_BxHxQxK
    weights_BxHxQxK = jnp.where(breaks_Bx1xQxK, jnp.exp(log_weights), 0.0)
    return softmax.weighted_values(weights_BxHxQxK, value_BxKxHxD,
                                   inputs.dropout, inputs.capture_weights)

  def reference(self, params, inputs, path=()):
    return softmax.reference_from_weights(self, params, inputs, path)

  def reference_weights(self, params, inputs, path=()):
    del params, path
    # z[b, h, i, j] = q_i · k_j / sqrt(d) (+ score bias).
    z, _ = softmax.reference_logits(inputs)
    beta = 1.0 / (1.0 + jnp.exp(-z))
    # key_j, key_k, query_i positions broadcast to [B, 1, Q, K(j), K(k)].
    pos_i = inputs.mask.q_positions_BxQ[:, None, :, None, None]
    pos_j = inputs.mask.kv_positions_BxK[:, None, None, :, None]
    pos_k = inputs.mask.kv_positions_BxK[:, None, None, None, :]
    seen = base.reference_mask(inputs)
    if self.options.attend_current:
      key_j = seen & (pos_j[..., 0] <= pos_i[..., 0])
      key_k = seen[:, :, :, None, :] & (pos_k <= pos_i)
    else:
      key_j = seen & (pos_j[..., 0] < pos_i[..., 0])
      key_k = seen[:, :, :, None, :] & (pos_k < pos_i)
    between = key_k & (pos_j < pos_k)
    left = jnp.prod(jnp.where(between, 1.0 - beta[:, :, :, None, :], 1.0), -1)
    return jnp.where(key_j, beta * left, 0.0)
