"""The learning rate logged for a step is the one optax applied in it."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from attention_jax.train import optim


def _config(warmup_steps: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({'optimizer': {
      'learning_rate': 1e-3, 'warmup_steps': warmup_steps, 'beta1': 0.9,
      'beta2': 0.98, 'eps': 1e-12, 'weight_decay': 0.0,
      'grad_clip_norm': 1e6,
  }})


@pytest.mark.parametrize('warmup_steps', [1, 4])
def test_logged_learning_rate_is_the_one_each_update_applied(warmup_steps):
  # With a constant gradient of 1 Adam's bias-corrected moments are exactly
  # 1, so update k moves the parameter by minus the rate optax evaluated at
  # its own count: this reads the applied rate off the optimizer itself.
  tx, schedule = optim.make_optimizer(_config(warmup_steps))
  params = jnp.zeros(())
  state = tx.init(params)
  applied, logged, ahead = [], [], []
  for step in range(1, 11):
    updates, state = tx.update(jnp.ones(()), state, params)
    new_params = optax.apply_updates(params, updates)
    applied.append(float(params - new_params))
    params = new_params
    logged.append(optim.applied_learning_rate(schedule, step))
    ahead.append(float(schedule(step)))
  np.testing.assert_allclose(logged, applied, rtol=1e-5)
  # The rate of the following update, which was logged before: it differs
  # wherever the schedule moves.
  assert not np.allclose(ahead, applied, rtol=1e-3)
