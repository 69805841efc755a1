"""The tied output projection with its hand-written backward pass equals
flax's `Embed.attend` and its traced gradient."""

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.model import tied_logits


def _loss(logits_fn, y, embedding, weights):
  # Any function of the logits; the weights make each logit's gradient differ.
  return jnp.sum(jnp.tanh(logits_fn(y, embedding)) * weights)


def test_values_and_gradients_equal_the_traced_form():
  ky, ke, kw = jax.random.split(jax.random.key(0), 3)
  y = jax.random.normal(ky, (2, 5, 8))
  embedding = jax.random.normal(ke, (11, 8))
  weights = jax.random.normal(kw, (2, 5, 11))
  plain = lambda y, e: jnp.dot(y, e.T)
  np.testing.assert_array_equal(tied_logits.tied_logits(y, embedding),
                                plain(y, embedding))
  grad = jax.jit(jax.grad(_loss, argnums=(1, 2)), static_argnums=0)
  for ours, traced in zip(grad(tied_logits.tied_logits, y, embedding, weights),
                          grad(plain, y, embedding, weights)):
    np.testing.assert_allclose(ours, traced, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_attend_equals_flax_embed_attend(dtype):
  embed = nn.Embed(11, 8, dtype=dtype)
  y = jax.random.normal(jax.random.key(1), (3, 4, 8))
  params = embed.init(jax.random.key(2), jnp.zeros((1, 1), jnp.int32))

  def ours(params, y):
    return embed.apply(params, y, method=lambda m, y: tied_logits.attend(m, y))

  def theirs(params, y):
    return embed.apply(params, y, method=nn.Embed.attend)

  assert ours(params, y).dtype == theirs(params, y).dtype == dtype
  np.testing.assert_array_equal(ours(params, y), theirs(params, y))
  total = lambda f: lambda p, y: jnp.sum(f(p, y).astype(jnp.float32) ** 2)
  for a, b in zip(jax.tree.leaves(jax.grad(total(ours), (0, 1))(params, y)),
                  jax.tree.leaves(jax.grad(total(theirs), (0, 1))(params, y))):
    np.testing.assert_allclose(np.asarray(a, np.float32),
                               np.asarray(b, np.float32), rtol=2e-2 if dtype
                               == jnp.bfloat16 else 1e-5, atol=1e-5)
