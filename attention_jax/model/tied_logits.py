"""Output logits from the tied token embedding, with the gradient's layout
chosen by hand.

logits = y E^T (Press & Wolf, 2017: the output projection shares the input
embedding E [V, E]). Traced, its gradient dE = g^T y reads the [B*T, V]
logit gradient g along its first axis, and XLA:CPU's matmul fusion wants
that axis minor: it wrote all of g transposed, reading [B*T, V] a column
at a time, which stopped fitting the cache above 2,048 rows (a `bible`
step at 32 x 128 tokens: 200 ms of 2.07 s in that one copy). Here the
backward pass computes dE^T = y^T g, [E, V], which reads g in the order
it was written, and transposes that small [E, V] result instead; an
optimisation barrier keeps XLA from folding the transpose back into the
product.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn


@jax.custom_vjp
def tied_logits(y_BxTxE: jax.Array, embedding_VxE: jax.Array) -> jax.Array:
  """y E^T, [B, T, V], as `flax.linen.Embed.attend` computes it."""
  return jnp.dot(y_BxTxE, embedding_VxE.T)


def _forward(y_BxTxE, embedding_VxE):
  return tied_logits(y_BxTxE, embedding_VxE), (y_BxTxE, embedding_VxE)


def _backward(residuals, g_BxTxV):
  y_BxTxE, embedding_VxE = residuals
  d_y = jnp.dot(g_BxTxV, embedding_VxE)
  d_embedding_ExV = jnp.einsum('bte,btv->ev', y_BxTxE, g_BxTxV)
  d_embedding = jax.lax.optimization_barrier(d_embedding_ExV).T
  return d_y.astype(y_BxTxE.dtype), d_embedding.astype(embedding_VxE.dtype)


tied_logits.defvjp(_forward, _backward)


def attend(embed: nn.Embed, y_BxTxE: jax.Array) -> jax.Array:
  """`embed.attend(y)` (dtype promotion included) with `tied_logits`'
  backward pass: logits [B, T, V] in the embedding's dtype."""
  query, embedding = embed.promote_dtype(y_BxTxE, embed.embedding,
                                         dtype=embed.dtype)
  return tied_logits(query, embedding)
