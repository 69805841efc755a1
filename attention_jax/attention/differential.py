"""Differential attention (Ye et al., 2024, "Differential Transformer",
ICLR 2025).

Each head splits its queries and keys into two groups of D/2 channels, Q1,
Q2 and K1, K2, and attends to its full D-channel values V with the
difference of the two softmax maps:

  DiffAttn = (softmax(Q1 K1ᵀ / √(D/2)) − λ softmax(Q2 K2ᵀ / √(D/2))) V,
  λ = exp(λ_q1 · λ_k1) − exp(λ_q2 · λ_k2) + λ_init,
  λ_init = 0.8 − 0.6 exp(−0.3 (l − 1)) for layer l = 1, 2, ... of a stack.

Noise that both maps share cancels. Each head's output is then normalised
(RMSNorm over its D channels with a learned scale shared by the heads, the
official code's `subln`) and multiplied by (1 − λ_init), before the frame's
output projection. λ_q1, λ_k1, λ_q2 and λ_k2 are D/2-vectors of the layer,
shared by its heads, initialised from a normal of std 0.1 as in the official
code. A differential head has the model's head size D, so with equal
qkv_dim and num_heads the layer has the parameters of softmax attention
plus 3D (the λ vectors and the norm's scale); the paper matches a baseline
of twice the heads.

Rotary positions: the frame rotates channel i of a head together with
channel i + D/2. A group must hold whole pairs, or Q1 K1ᵀ would not depend
on the query-key offset only; group 1 holds the pairs of even index i,
group 2 those of odd index, so D must be divisible by 4. Both groups then
span the frequency range, and group 1 rotates with exactly the frequencies
base^(−2j/(D/2)) that the official code gives its D/2-channel half-heads.

Score biases (ALiBi, relative) are added to both maps' logits, and an
attention sink enters both softmax denominators. Dropout applies to each
softmax map.
"""

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import partitioning as part
from attention_jax.attention import base
from attention_jax.attention import head_norms
from attention_jax.attention import registry
from attention_jax.attention import softmax

_LAMBDAS = ('lambda_q1', 'lambda_k1', 'lambda_q2', 'lambda_k2')
# The official code's epsilon of the per-head RMSNorm.
_NORM_EPSILON = 1e-5


def lambda_init(layer: int) -> float:
  """λ_init of layer `layer`, counted from 1 as in the paper."""
  return 0.8 - 0.6 * np.exp(-0.3 * (layer - 1))


def _check_head_dim(head_dim: int) -> None:
  if head_dim % 4:
    raise ValueError(
        'differential attention splits each head into two groups of whole '
        f'rotary channel pairs, so the head dimension qkv_dim/num_heads='
        f'{head_dim} must be divisible by 4; choose qkv_dim and num_heads '
        'accordingly.')


def _groups(x_BxLxHxD):
  """The two channel groups, [B, L, H, D/2] each: pairs of even, odd index.

  Channel c = s·D/2 + 2j + r (half s, pair index 2j + r) goes to group r.
  """
  shape = x_BxLxHxD.shape
  split = x_BxLxHxD.reshape(shape[:-1] + (2, shape[-1] // 4, 2))
  half = shape[:-1] + (shape[-1] // 2,)
  return split[..., 0].reshape(half), split[..., 1].reshape(half)


@registry.register('differential')
class Differential(base.Mechanism):
  """Difference of two softmax maps per head, then a per-head RMSNorm.

  Parameters: the frame's, plus 'lambda_q1', 'lambda_k1', 'lambda_q2',
  'lambda_k2' ([D/2] each) and 'head_norm' ([D], the RMSNorm's scale).
  """

  # Two softmax maps: everything softmax attention can do.
  capabilities = softmax.FAMILY_CAPABILITIES

  @property
  def lambda_init(self) -> float:
    return lambda_init(self.layer_index + 1)

  def _lambda(self, module, head_dim: int):
    """λ, a float32 scalar, from the layer's λ vectors."""
    init = part.init(jax.nn.initializers.normal(stddev=0.1), None)
    q1, k1, q2, k2 = (module.param(name, init, (head_dim // 2,), jnp.float32)
                      for name in _LAMBDAS)
    return (jnp.exp(jnp.dot(q1, k1)) - jnp.exp(jnp.dot(q2, k2))
            + self.lambda_init)

  def attend(self, module, inputs):
    query_BxQxHxD = inputs.query_BxQxHxD
    num_heads, head_dim = query_BxQxHxD.shape[2:]
    _check_head_dim(head_dim)
    key_BxKxHxD = base.repeat_kv_heads(inputs.key_BxKxGxD, num_heads)
    value_BxKxHxD = base.repeat_kv_heads(inputs.value_BxKxGxD, num_heads)
    mask = inputs.mask.dense()
    maps, probs = [], []
    # The two maps are kept only for a capture, which shows their difference.
    keep = None if inputs.capture_weights is None else probs.append
    for query_group, key_group in zip(_groups(query_BxQxHxD),
                                      _groups(key_BxKxHxD)):
      logits_BxHxQxK = softmax.dot_product_scores(
          query_group, key_group).astype(jnp.float32)
      if inputs.bias_BxHxQxK is not None:
        logits_BxHxQxK += inputs.bias_BxHxQxK
      maps.append(softmax.softmax_weighted_sum(
          logits_BxHxQxK, value_BxKxHxD, mask, inputs.dropout,
          inputs.sink_logit_H, keep).astype(jnp.float32))
    lam = self._lambda(module, head_dim)
    if keep is not None:
      inputs.capture_weights(probs[0] - lam * probs[1])
    # (p1 − λ p2) V, with the two weighted sums formed separately.
    out_BxQxHxD = maps[0] - lam * maps[1]
    scale_D = module.param(
        'head_norm', part.init(jax.nn.initializers.ones, part.HEAD_DIM),
        (head_dim,), jnp.float32)
    out_BxQxHxD = head_norms.rms_normalise(out_BxQxHxD, scale_D,
                                           _NORM_EPSILON)
    return (out_BxQxHxD * (1 - self.lambda_init)).astype(value_BxKxHxD.dtype)

  def reference_weights(self, params, inputs, path=()):
    del path
    query = inputs.query_BxQxHxD.astype(jnp.float32)
    num_heads, head_dim = query.shape[2:]
    key = base.repeat_kv_heads(inputs.key_BxKxGxD, num_heads).astype(
        jnp.float32)
    half = head_dim // 2
    # Pair i is channels i and i + D/2; group 1 the even pairs, group 2 odd.
    pairs = np.arange(half)
    channels = [np.concatenate([p, p + half]) for p in (pairs[0::2],
                                                        pairs[1::2])]
    allowed = base.reference_mask(inputs)
    maps = []
    for group in channels:
      logits = jnp.einsum('bqhd,bkhd->bhqk', query[..., group],
                          key[..., group]) / np.sqrt(half)
      if inputs.bias_BxHxQxK is not None:
        logits = logits + inputs.bias_BxHxQxK
      maps.append(softmax.reference_softmax_weights(logits, allowed,
                                                    inputs.sink_logit_H))
    q1, k1, q2, k2 = (params[name] for name in _LAMBDAS)
    lam = (jnp.exp(jnp.sum(q1 * k1)) - jnp.exp(jnp.sum(q2 * k2))
           + self.lambda_init)
    return maps[0] - lam * maps[1]

  def reference(self, params, inputs, path=()):
    num_heads = inputs.query_BxQxHxD.shape[2]
    diff = softmax.reference_weighted_values(
        self.reference_weights(params, inputs, path),
        base.repeat_kv_heads(inputs.value_BxKxGxD, num_heads))
    rms = jnp.sqrt(jnp.mean(diff ** 2, -1, keepdims=True) + _NORM_EPSILON)
    scale = params['head_norm'][None, None, None]
    return diff / rms * scale * (1 - self.lambda_init)
