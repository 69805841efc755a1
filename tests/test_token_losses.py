"""The token losses' written-out gradient against the traced formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.train import steps


def _traced_losses(logits, targets, label_smoothing):
  """The losses as the formula reads, differentiated by JAX itself."""
  log_probs = jax.nn.log_softmax(logits)
  nll = -jnp.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  uniform = (-jnp.sum(log_probs, -1) - nll) / (logits.shape[-1] - 1)
  return (1 - label_smoothing) * nll + label_smoothing * uniform, nll


def _inputs(vocab=37):
  rng = np.random.default_rng(0)
  logits = jnp.asarray(3 * rng.normal(size=(3, 5, vocab)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, vocab, (3, 5)), jnp.int32)
  # Different weights for the two outputs, so each cotangent is checked.
  w_smoothed = jnp.asarray(rng.uniform(size=(3, 5)), jnp.float32)
  w_nll = jnp.asarray(rng.uniform(size=(3, 5)), jnp.float32)
  return logits, targets, w_smoothed, w_nll


@pytest.mark.parametrize('label_smoothing', [0.0, 0.1])
def test_values_and_gradient_equal_the_traced_formula(label_smoothing):
  logits, targets, w_smoothed, w_nll = _inputs()

  def objective(losses_fn, logits):
    smoothed, nll = losses_fn(logits, targets, label_smoothing)
    return (smoothed * w_smoothed).sum() + (nll * w_nll).sum()

  ours = objective(steps.token_losses, logits)
  reference = objective(_traced_losses, logits)
  np.testing.assert_array_equal(
      steps.token_losses(logits, targets, label_smoothing),
      _traced_losses(logits, targets, label_smoothing))
  assert ours == reference
  grad = jax.grad(lambda l: objective(steps.token_losses, l))(logits)
  grad_ref = jax.grad(lambda l: objective(_traced_losses, l))(logits)
  np.testing.assert_allclose(grad, grad_ref, rtol=1e-5, atol=1e-7)


def test_gradient_of_a_confident_wrong_prediction_is_finite():
  """Logits 80 nats apart: the softmax underflows, the gradient must not."""
  logits = jnp.zeros((1, 1, 4), jnp.float32).at[0, 0, 2].set(80.0)
  targets = jnp.zeros((1, 1), jnp.int32)
  grad = jax.grad(
      lambda l: steps.token_losses(l, targets, 0.1)[0].sum())(logits)
  np.testing.assert_allclose(
      grad[0, 0], [-0.9, -0.1 / 3, 1 - 0.1 / 3, -0.1 / 3],
      atol=1e-6)


def test_jit_and_vmap_compose_with_the_written_gradient():
  logits, targets, _, _ = _inputs(vocab=11)
  fn = jax.jit(jax.vmap(jax.grad(
      lambda l, t: steps.token_losses(l, t, 0.1)[0].sum())))
  grad = fn(logits, targets)
  grad_ref = jax.vmap(jax.grad(
      lambda l, t: _traced_losses(l, t, 0.1)[0].sum()))(logits, targets)
  np.testing.assert_allclose(grad, grad_ref, rtol=1e-5, atol=1e-7)
