"""Multiplicative scores of Luong et al. (2015): 'general' and 'dot'."""

import jax.numpy as jnp

from attention_jax import partitioning as part
from attention_jax.attention import registry
from attention_jax.attention import softmax


def _scaled_identity(rng, shape, dtype=jnp.float32):
  """Per-head I / sqrt(D), so training starts from scaled dot product."""
  del rng
  num_heads, depth, _ = shape
  eye = jnp.eye(depth, dtype=dtype) / jnp.sqrt(depth).astype(dtype)
  return jnp.broadcast_to(eye, (num_heads, depth, depth))


@registry.register('bilinear')
class Bilinear(softmax.Softmax):
  """Luong 'general' scores q_h^T W_h k_h with a learned D x D W_h per head.

  W_h ('score_kernel', [H, D, D]) starts as I / sqrt(D), i.e. exactly scaled
  dot-product attention, and is free to learn any bilinear form from there.
  A general W_h does not commute with rotations, so with 'rope' the scores
  see absolute positions, not only offsets.
  """

  def scores(self, module, query_BxQxHxD, key_BxKxHxD):
    num_heads, depth = query_BxQxHxD.shape[2:]
    w_HxDxD = module.param(
        'score_kernel',
        part.init(_scaled_identity, part.HEADS, part.HEAD_DIM, part.HEAD_DIM),
        (num_heads, depth, depth),
    )
    query_w_BxQxHxD = jnp.einsum(
        'bqhd,hde->bqhe', query_BxQxHxD, w_HxDxD.astype(query_BxQxHxD.dtype)
    )
    return jnp.einsum('bqhe,bkhe->bhqk', query_w_BxQxHxD, key_BxKxHxD)

  def reference_scores(self, params, query_BxQxHxD, key_BxKxHxD):
    # score(h_t, h_s) = h_t^T W_a h_s, per head.
    w = params['score_kernel']
    q_w = jnp.sum(query_BxQxHxD[..., :, None] * w[None, None], -2)
    scores_BxQxKxH = jnp.sum(q_w[:, :, None] * key_BxKxHxD[:, None], -1)
    return jnp.transpose(scores_BxQxKxH, (0, 3, 1, 2))


@registry.register('unscaled_dot_product')
class UnscaledDotProduct(softmax.Softmax):
  """Luong 'dot' scores q^T k, without the 1/sqrt(D) of Vaswani et al.

  Unscaled logits grow with D, so the softmax saturates sooner; this entry
  exists to measure that.
  """

  def scores(self, module, query_BxQxHxD, key_BxKxHxD):
    del module
    return jnp.einsum('bqhd,bkhd->bhqk', query_BxQxHxD, key_BxKxHxD)

  def reference_scores(self, params, query_BxQxHxD, key_BxKxHxD):
    del params
    scores_BxQxKxH = jnp.sum(query_BxQxHxD[:, :, None] * key_BxKxHxD[:, None],
                             -1)
    return jnp.transpose(scores_BxQxKxH, (0, 3, 1, 2))
