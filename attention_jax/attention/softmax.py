"""Softmax attention (Vaswani et al., 2017), the base of the softmax family.

softmax(q k^T / sqrt(d) + bias) v over the keys each query may see. Other
members of the family change only what a score is (additive, bilinear,
cosine, ...): a subclass overrides `scores` (and `reference_scores`, the
same formula written plainly), and everything else — masks, score biases,
float32 softmax, dropout on the weights, the key/value cache — is shared.
Only this class computes exactly what the fused kernels compute, so only it
declares them; a subclass that does not declare its own capabilities gets
the family's, without fused kernels.
"""

import dataclasses

import jax
import jax.numpy as jnp

from attention_jax.attention import base
from attention_jax.attention import registry

# What every member of the family can do.
FAMILY_CAPABILITIES = base.Capabilities(
    causal=True,
    decoding_state=base.DecodingState.KV_CACHE,
    score_bias=True,
    position_schemes=frozenset({'rope', 'alibi', 'relative_bias'}),
    sink=True,
)


def dot_product_scores(query_BxQxHxD, key_BxKxHxD):
  """Scaled dot-product logits q k^T / sqrt(d), [B, H, Q, K]."""
  depth = query_BxQxHxD.shape[-1]
  return jnp.einsum(
      'bqhd,bkhd->bhqk', query_BxQxHxD, key_BxKxHxD
  ) / jnp.sqrt(depth).astype(query_BxQxHxD.dtype)


def biased_logits(inputs: base.AttentionInputs):
  """The call's q k^T / sqrt(d) plus its score bias, and its values.

  The start of every mechanism that weighs values by a function of scaled
  dot-product scores.

  Returns:
    (logits [B, H, Q, K] float32, values [B, K, H, D] with the H query heads).
  """
  num_heads = inputs.query_BxQxHxD.shape[2]
  key_BxKxHxD = base.repeat_kv_heads(inputs.key_BxKxGxD, num_heads)
  logits_BxHxQxK = dot_product_scores(inputs.query_BxQxHxD,
                                      key_BxKxHxD).astype(jnp.float32)
  if inputs.bias_BxHxQxK is not None:
    logits_BxHxQxK += inputs.bias_BxHxQxK
  return logits_BxHxQxK, base.repeat_kv_heads(inputs.value_BxKxGxD, num_heads)


def weighted_values(weights_BxHxQxK, value_BxKxHxD, dropout=None,
                    capture=None):
  """sum_j w_ij v_j, [B, Q, H, D] in the values' dtype, with dropout (a
  callable or None) applied to the weights; `capture` (a callable or None)
  is given the weights before dropout."""
  if capture is not None:
    capture(weights_BxHxQxK.astype(jnp.float32))
  weights_BxHxQxK = weights_BxHxQxK.astype(value_BxKxHxD.dtype)
  if dropout is not None:
    weights_BxHxQxK = dropout(weights_BxHxQxK)
  return jnp.einsum('bhqk,bkhd->bqhd', weights_BxHxQxK, value_BxKxHxD)


def reference_logits(inputs: base.AttentionInputs):
  """For references: x_ij = q_i · k_j / sqrt(d) (+ the score bias), written
  plainly in float32 [B, H, Q, K], and the float32 values [B, K, H, D]."""
  num_heads = inputs.query_BxQxHxD.shape[2]
  q = inputs.query_BxQxHxD.astype(jnp.float32)
  k = base.repeat_kv_heads(inputs.key_BxKxGxD, num_heads).astype(jnp.float32)
  x = jnp.moveaxis((q[:, :, None] * k[:, None]).sum(-1), 3, 1) / jnp.sqrt(
      q.shape[-1])
  if inputs.bias_BxHxQxK is not None:
    x = x + inputs.bias_BxHxQxK
  return x, base.repeat_kv_heads(inputs.value_BxKxGxD, num_heads).astype(
      jnp.float32)


def softmax_weighted_sum(logits_BxHxQxK, value_BxKxHxD, mask, dropout=None,
                         sink_logit_H=None, capture=None):
  """Masked softmax over keys (in float32), then the weighted sum of values.

  A query that may see no key at all averages every key (its logits are all
  the same fill); only padding queries are in that case, and nothing reads
  them.

  Args:
    logits_BxHxQxK: scores, any float dtype.
    value_BxKxHxD: values.
    mask: boolean, broadcastable to the logits; True where a query may attend
      to a key.
    dropout: optional callable applied to the attention probabilities.
    sink_logit_H: optional float32 [H]: one more logit per head in the
      denominator, whose weight goes to no value (an attention sink).
    capture: optional callable given the float32 probabilities before
      dropout (`AttentionInputs.capture_weights`).

  Returns:
    The attended values, [B, Q, H, D], in the dtype of the values.
  """
  # Softmax in float32 keeps bfloat16 training stable.
  logits_BxHxQxK = jnp.where(
      mask, logits_BxHxQxK.astype(jnp.float32), jnp.finfo(jnp.float32).min
  )
  if sink_logit_H is None:
    probs_BxHxQxK = jax.nn.softmax(logits_BxHxQxK)
  else:
    sink_BxHxQx1 = jnp.broadcast_to(sink_logit_H[None, :, None, None],
                                    logits_BxHxQxK.shape[:3] + (1,))
    probs_BxHxQxK = jax.nn.softmax(
        jnp.concatenate([logits_BxHxQxK, sink_BxHxQx1], -1))[..., :-1]
  if capture is not None:
    capture(probs_BxHxQxK)
  probs_BxHxQxK = probs_BxHxQxK.astype(value_BxKxHxD.dtype)
  if dropout is not None:
    probs_BxHxQxK = dropout(probs_BxHxQxK)
  return jnp.einsum('bhqk,bkhd->bqhd', probs_BxHxQxK, value_BxKxHxD)


def reference_softmax_weights(logits_BxHxQxK, allowed, sink_logit_H=None):
  """softmax over allowed keys, written plainly: float32 [B, H, Q, K].

  With a sink logit s per head, p_ij = exp(l_ij) / (exp(s) + sum_k exp(l_ik)).
  A query that may see no key gets 0.
  """
  logits = jnp.where(allowed, logits_BxHxQxK.astype(jnp.float32), 0.0)
  peak = jnp.max(jnp.where(allowed, logits, -jnp.inf), -1, keepdims=True)
  peak = jnp.where(allowed.any(-1, keepdims=True), peak, 0.0)
  sink = (jnp.full((logits.shape[1],), -jnp.inf) if sink_logit_H is None
          else sink_logit_H)[None, :, None, None]
  peak = jnp.maximum(peak, sink)
  weights = jnp.where(allowed, jnp.exp(logits - peak), 0.0)
  total = jnp.sum(weights, -1, keepdims=True) + jnp.exp(sink - peak)
  return weights / jnp.where(total > 0, total, 1.0)


def reference_weighted_values(weights_BxHxQxK, value_BxKxHxD):
  """out_i = sum_j w_ij v_j, float32 [B, Q, H, D], for references."""
  return jnp.einsum('bhqk,bkhd->bqhd', weights_BxHxQxK,
                    value_BxKxHxD.astype(jnp.float32))


def reference_from_weights(mechanism: base.Mechanism, params, inputs,
                           path=()) -> jax.Array:
  """out_i = sum_j w_ij v_j with w the mechanism's `reference_weights`:
  the `reference` of a mechanism that only reweights softmax attention's
  values, float32 [B, Q, H, D]."""
  num_heads = inputs.query_BxQxHxD.shape[2]
  return reference_weighted_values(
      mechanism.reference_weights(params, inputs, path),
      base.repeat_kv_heads(inputs.value_BxKxGxD, num_heads))


def reference_softmax_attention(logits_BxHxQxK, value_BxKxHxD, allowed,
                                sink_logit_H=None):
  """softmax over allowed keys, then sum_j p_ij v_j, written plainly."""
  return reference_weighted_values(
      reference_softmax_weights(logits_BxHxQxK, allowed, sink_logit_H),
      value_BxKxHxD)


@registry.register('softmax')
class Softmax(base.Mechanism):
  """softmax(q k^T / sqrt(d) + bias) v; the fused kernels compute it too."""

  capabilities = dataclasses.replace(
      FAMILY_CAPABILITIES, fused_kernels=('cudnn', 'pallas')
  )

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    # Another score is not what the fused kernels compute.
    if 'capabilities' not in cls.__dict__:
      cls.capabilities = FAMILY_CAPABILITIES

  def scores(self, module, query_BxQxHxD, key_BxKxHxD):
    """Logits [B, H, Q, K] of every query against every key.

    May create parameters with `module.param`; called once per forward pass.
    """
    del module
    return dot_product_scores(query_BxQxHxD, key_BxKxHxD)

  def reference_scores(self, params, query_BxQxHxD, key_BxKxHxD):
    """`scores` written plainly from the paper, float32 [B, H, Q, K]."""
    del params
    products = query_BxQxHxD[:, :, None] * key_BxKxHxD[:, None]
    return jnp.moveaxis(products.sum(-1), 3, 1) / jnp.sqrt(
        query_BxQxHxD.shape[-1])

  def attend(self, module, inputs):
    num_heads = inputs.query_BxQxHxD.shape[2]
    key_BxKxHxD = base.repeat_kv_heads(inputs.key_BxKxGxD, num_heads)
    value_BxKxHxD = base.repeat_kv_heads(inputs.value_BxKxGxD, num_heads)
    logits_BxHxQxK = self.scores(
        module, inputs.query_BxQxHxD, key_BxKxHxD).astype(jnp.float32)
    if inputs.bias_BxHxQxK is not None:
      logits_BxHxQxK += inputs.bias_BxHxQxK
    return softmax_weighted_sum(logits_BxHxQxK, value_BxKxHxD,
                                inputs.mask.dense(), inputs.dropout,
                                inputs.sink_logit_H, inputs.capture_weights)

  def reference_weights(self, params, inputs, path=()):
    del path
    num_heads = inputs.query_BxQxHxD.shape[2]
    key = base.repeat_kv_heads(inputs.key_BxKxGxD, num_heads)
    logits = self.reference_scores(
        params, inputs.query_BxQxHxD.astype(jnp.float32),
        key.astype(jnp.float32))
    if inputs.bias_BxHxQxK is not None:
      logits = logits + inputs.bias_BxHxQxK
    return reference_softmax_weights(logits, base.reference_mask(inputs),
                                     inputs.sink_logit_H)

  def reference(self, params, inputs, path=()):
    return reference_from_weights(self, params, inputs, path)
