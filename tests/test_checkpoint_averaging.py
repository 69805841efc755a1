"""The final evaluation's mean of the last checkpoints, and its config checks."""

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.train import averaging
from attention_jax.train import config_check
from attention_jax.train.checkpoint import Checkpointer
from experiments.configs import smoke


def _save_checkpoints(workdir, steps, keep):
  """Saves random parameters (sharded over 8 devices) at `steps`."""
  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ('data', 'fsdp'))
  shardings = {'kernel': NamedSharding(mesh, P('fsdp', None)),
               'scale': NamedSharding(mesh, P())}
  checkpointer = Checkpointer(workdir, keep=keep, remove_unfinished=True)
  saved = {}
  for step in steps:
    key_a, key_b = jax.random.split(jax.random.key(step))
    params = {
        'kernel': jax.device_put(
            jax.random.normal(key_a, (8, 6)), shardings['kernel']),
        # bfloat16 is summed in float32 and the mean cast back.
        'scale': jax.device_put(
            jax.random.normal(key_b, (6,), jnp.bfloat16), shardings['scale']),
    }
    checkpointer.save(step, {'params': params, 'step': step}, {'stream': 0})
    saved[step] = jax.device_get(params)
  checkpointer.wait()
  return checkpointer, params, shardings, saved


def test_mean_of_the_last_checkpoints_with_their_shardings(tmp_path):
  checkpointer, params, shardings, saved = _save_checkpoints(
      str(tmp_path), [10, 20, 30, 40, 45], keep=4)
  steps, mean = averaging.average_last(checkpointer, 3, params, shardings)
  assert steps == [30, 40, 45]
  for name in ('kernel', 'scale'):
    expected = np.mean(
        [saved[s][name].astype(np.float32) for s in steps], axis=0)
    assert mean[name].dtype == params[name].dtype
    assert mean[name].sharding == shardings[name]
    np.testing.assert_allclose(
        np.asarray(mean[name], np.float32), expected,
        rtol=1e-6 if name == 'kernel' else 1e-2)


def test_fewer_checkpoints_than_asked_are_averaged_and_named(tmp_path):
  checkpointer, params, shardings, saved = _save_checkpoints(
      str(tmp_path), [10, 20], keep=5)
  steps, mean = averaging.average_last(checkpointer, 5, params, shardings)
  assert steps == [10, 20]
  np.testing.assert_allclose(
      mean['kernel'], (saved[10]['kernel'] + saved[20]['kernel']) / 2,
      rtol=1e-6)


def _config(**fields):
  config = smoke.get_config()
  config.update_from_flattened_dict(fields)
  return config


def test_averaging_more_than_is_kept_or_written_is_refused():
  config_check.check_config(_config(**{'eval.average_checkpoints': 3}))
  with pytest.raises(ValueError, match=r'average_checkpoints=1 .* or 0 \(off'):
    config_check.check_config(_config(**{'eval.average_checkpoints': 1}))
  with pytest.raises(ValueError,
                     match=r'average_checkpoints=5 .*keep_checkpoints=3'):
    config_check.check_config(_config(**{'eval.average_checkpoints': 5}))
  with pytest.raises(ValueError, match=r'saves only 3 checkpoint'):
    config_check.check_config(_config(**{
        'eval.average_checkpoints': 4, 'keep_checkpoints': 4}))
