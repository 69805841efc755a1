"""Additive attention scores (Bahdanau et al., 2015)."""

import flax.linen as nn
import jax.numpy as jnp

from attention_jax.attention import registry
from attention_jax.attention.dot_product import DotProductAttention
from attention_jax.model import partitioning as part


@registry.register('additive')
class AdditiveAttention(DotProductAttention):
  """Softmax attention with scores v_h^T tanh(W_h q + U_h k) per head h.

  The paper's W and U are linear maps of the query and key, so the base's
  (biased) query and key projections already are them, per head; only the
  score vector v_h is added. Decoding, masks and positions are the base's;
  with 'rope', rotations do not cancel inside the tanh, so rotated queries
  and keys carry absolute rather than relative positions.

  Cost: the tanh is taken of every query-key pair, a [B, H, Q, K, D]
  intermediate, D times the memory of dot-product logits. Fine for the
  sentence lengths of translation; not meant for long sequences.
  """

  def _scores(self, query_BxQxHxD, key_BxKxHxD):
    num_heads, depth = query_BxQxHxD.shape[2:]
    # Unit-variance scores at init: tanh outputs are at most 1 in size.
    v_HxD = self.param(
        'score_vector',
        part.init(
            nn.initializers.normal(stddev=depth**-0.5), part.HEADS,
            part.HEAD_DIM,
        ),
        (num_heads, depth),
        jnp.float32,
    )
    q_BxHxQx1xD = jnp.moveaxis(query_BxQxHxD, 2, 1)[:, :, :, None]
    k_BxHx1xKxD = jnp.moveaxis(key_BxKxHxD, 2, 1)[:, :, None]
    hidden_BxHxQxKxD = jnp.tanh(q_BxHxQx1xD + k_BxHx1xKxD)
    return jnp.einsum(
        'bhqkd,hd->bhqk', hidden_BxHxQxKxD, v_HxD.astype(query_BxQxHxD.dtype)
    )
