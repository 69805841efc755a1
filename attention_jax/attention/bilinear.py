"""Multiplicative scores of Luong et al. (2015): 'general' and 'dot'."""

import jax.numpy as jnp

from attention_jax.attention import registry
from attention_jax.attention.dot_product import DotProductAttention
from attention_jax.model import partitioning as part


def _scaled_identity(rng, shape, dtype=jnp.float32):
  """Per-head I / sqrt(D), so training starts from scaled dot product."""
  del rng
  num_heads, depth, _ = shape
  eye = jnp.eye(depth, dtype=dtype) / jnp.sqrt(depth).astype(dtype)
  return jnp.broadcast_to(eye, (num_heads, depth, depth))


@registry.register('bilinear')
class BilinearAttention(DotProductAttention):
  """Luong 'general' scores q_h^T W_h k_h with a learned D x D W_h per head.

  W_h starts as I / sqrt(D), i.e. exactly scaled dot-product attention, and
  is free to learn any bilinear form from there. A general W_h does not
  commute with rotations, so with 'rope' the scores see absolute positions,
  not only offsets.
  """

  def _scores(self, query_BxQxHxD, key_BxKxHxD):
    num_heads, depth = query_BxQxHxD.shape[2:]
    w_HxDxD = self.param(
        'score_kernel',
        part.init(_scaled_identity, part.HEADS, part.HEAD_DIM, part.HEAD_DIM),
        (num_heads, depth, depth),
    )
    query_w_BxQxHxD = jnp.einsum(
        'bqhd,hde->bqhe', query_BxQxHxD, w_HxDxD.astype(query_BxQxHxD.dtype)
    )
    return jnp.einsum('bqhe,bkhe->bhqk', query_w_BxQxHxD, key_BxKxHxD)


@registry.register('dot')
class DotAttention(DotProductAttention):
  """Luong 'dot' scores q^T k, without the 1/sqrt(D) of Vaswani et al.

  Unscaled logits grow with D, so the softmax saturates sooner; this entry
  exists to measure that.
  """

  def _scores(self, query_BxQxHxD, key_BxKxHxD):
    return jnp.einsum('bqhd,bkhd->bhqk', query_BxQxHxD, key_BxKxHxD)
