"""Additive attention scores (Bahdanau et al., 2015)."""

import flax.linen as nn
import jax.numpy as jnp

from attention_jax import partitioning as part
from attention_jax.attention import registry
from attention_jax.attention import softmax


@registry.register('additive')
class Additive(softmax.Softmax):
  """Softmax attention with scores v_h^T tanh(W_h q + U_h k) per head h.

  The paper's W and U are linear maps of the query and key, so the frame's
  (biased) query and key projections already are them, per head; only the
  score vector v_h ('score_vector', [H, D]) is added. With 'rope', rotations
  do not cancel inside the tanh, so rotated queries and keys carry absolute
  rather than relative positions.

  Cost: the tanh is taken of every query-key pair, a [B, H, Q, K, D]
  intermediate, D times the memory of dot-product logits. Fine for the
  sentence lengths of translation; not meant for long sequences.
  """

  def scores(self, module, query_BxQxHxD, key_BxKxHxD):
    num_heads, depth = query_BxQxHxD.shape[2:]
    # Unit-variance scores at init: tanh outputs are at most 1 in size.
    v_HxD = module.param(
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

  def reference_scores(self, params, query_BxQxHxD, key_BxKxHxD):
    # e_ij = v^T tanh(W s_i + U h_j), per head.
    hidden = jnp.tanh(query_BxQxHxD[:, :, None] + key_BxKxHxD[:, None])
    scores_BxQxKxH = jnp.sum(hidden * params['score_vector'][None, None, None],
                             -1)
    return jnp.transpose(scores_BxQxKxH, (0, 3, 1, 2))
