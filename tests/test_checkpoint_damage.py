"""A damaged checkpoint step: restore falls back to the newest that restores.

Each kind of damage is done to a real orbax step directory, as a full disk,
a killed copy or a careless clean-up leaves it.
"""

import glob
import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding
import numpy as np
import pytest

from attention_jax.train import checkpoint
from attention_jax.train.checkpoint import Checkpointer


def _state(step):
  return {'params': {'w': jnp.arange(4096.0) + step}, 'opt': jnp.ones(3) * step}


def _shardings():
  device = SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda _: device, _state(0))


def _arrays(step_dir):
  return glob.glob(os.path.join(step_dir, 'state', 'ocdbt.process_0', 'd', '*'))


def _truncate_array(step_dir):
  biggest = max(_arrays(step_dir), key=os.path.getsize)
  with open(biggest, 'r+b') as f:
    f.truncate(os.path.getsize(biggest) // 2)


def _remove_array(step_dir):
  os.remove(max(_arrays(step_dir), key=os.path.getsize))


def _empty_step(step_dir):
  for path in glob.glob(os.path.join(step_dir, '*')):
    if os.path.isdir(path):
      shutil.rmtree(path)
    else:
      os.remove(path)


def _empty_state_metadata(step_dir):
  open(os.path.join(step_dir, 'state', '_METADATA'), 'w').close()


def _remove_data_item(step_dir):
  shutil.rmtree(os.path.join(step_dir, 'data'))


def _empty_data_item(step_dir):
  open(os.path.join(step_dir, 'data', 'metadata'), 'w').close()


# Damage, and whether the parameters alone still restore from the step.
_DAMAGE = {
    'truncated array file': (_truncate_array, False),
    'missing array file': (_remove_array, False),
    'empty step directory': (_empty_step, False),
    'empty state metadata': (_empty_state_metadata, False),
    'missing data stream item': (_remove_data_item, True),
    'empty data stream item': (_empty_data_item, True),
}


def _workdir(tmp_path, steps=(1, 2)):
  workdir = str(tmp_path / 'run')
  checkpointer = Checkpointer(workdir, keep=5)
  for step in steps:
    checkpointer.save(step, _state(step), {'stream': {'epoch': step}})
    checkpointer.wait()
  checkpointer.close()
  return workdir


def _files(directory):
  return sorted(
      (os.path.relpath(p, directory), os.path.getsize(p))
      for p in glob.glob(os.path.join(directory, '**'), recursive=True)
      if os.path.isfile(p)
  )


@pytest.mark.parametrize('kind', sorted(_DAMAGE))
def test_training_falls_back_and_moves_the_damaged_step_aside(
    kind, tmp_path, caplog
):
  workdir = _workdir(tmp_path)
  damaged = os.path.join(workdir, 'checkpoints', '2')
  _DAMAGE[kind][0](damaged)
  left = _files(damaged)

  checkpointer = Checkpointer(workdir, keep=5, remove_unfinished=True)
  with caplog.at_level(logging.WARNING):
    step, state, data = checkpointer.restore_latest(_state(0), _shardings())
  assert step == 1 and data == {'stream': {'epoch': 1}}
  np.testing.assert_array_equal(state['params']['w'], _state(1)['params']['w'])
  moved = os.path.join(workdir, checkpoint.DAMAGED_DIR, '2')
  warning = caplog.text
  assert f'Checkpoint {damaged} does not restore' in warning, warning
  assert f'moved to {moved}' in warning and 'Using step 1' in warning
  # Nothing is deleted: the damaged step is kept, file for file.
  assert _files(moved) == left
  assert not os.path.exists(damaged)

  # Training goes on and saves the same step again.
  checkpointer.save(2, _state(2), {'stream': {'epoch': 2}})
  checkpointer.wait()
  assert checkpointer.restore_latest(_state(0), _shardings())[0] == 2
  checkpointer.close()


@pytest.mark.parametrize('kind', sorted(_DAMAGE))
def test_translation_reads_the_newest_params_that_restore_and_moves_nothing(
    kind, tmp_path, caplog
):
  workdir = _workdir(tmp_path)
  damaged = os.path.join(workdir, 'checkpoints', '2')
  damage, params_survive = _DAMAGE[kind]
  damage(damaged)
  left = _files(damaged)

  reader = Checkpointer(workdir, keep=5)
  with caplog.at_level(logging.WARNING):
    step, params = reader.restore_params_latest(
        _state(0)['params'], _shardings()['params']
    )
  reader.close()
  expected = 2 if params_survive else 1
  assert step == expected
  np.testing.assert_array_equal(params['w'], _state(expected)['params']['w'])
  if not params_survive:
    assert f'Checkpoint {damaged} does not restore' in caplog.text
    assert 'left in place' in caplog.text
  assert _files(damaged) == left


def test_when_no_step_restores_the_error_names_each_and_nothing_moves(
    tmp_path
):
  workdir = _workdir(tmp_path)
  directory = os.path.join(workdir, 'checkpoints')
  _truncate_array(os.path.join(directory, '2'))
  _remove_data_item(os.path.join(directory, '1'))
  before = _files(directory)

  checkpointer = Checkpointer(workdir, keep=5, remove_unfinished=True)
  with pytest.raises(checkpoint.CheckpointRestoreError) as error:
    checkpointer.restore_latest(_state(0), _shardings())
  checkpointer.close()
  message = str(error.value)
  assert f'No checkpoint in {directory} restores' in message
  for step in ('1', '2'):
    assert os.path.join(directory, step) + ': ' in message
  assert f'mv {directory} {directory}.damaged' in message
  assert 'new --workdir' in message
  assert _files(directory) == before
  assert not os.path.exists(os.path.join(workdir, checkpoint.DAMAGED_DIR))


def test_a_second_damaged_copy_of_a_step_keeps_the_first(tmp_path):
  workdir = _workdir(tmp_path)
  for attempt in range(2):
    _remove_array(os.path.join(workdir, 'checkpoints', '2'))
    checkpointer = Checkpointer(workdir, keep=5, remove_unfinished=True)
    assert checkpointer.restore_latest(_state(0), _shardings())[0] == 1
    if attempt == 0:
      checkpointer.save(2, _state(2), {'stream': {'epoch': 2}})
      checkpointer.wait()
    checkpointer.close()
  damaged = os.path.join(workdir, checkpoint.DAMAGED_DIR)
  assert sorted(os.listdir(damaged)) == ['2', '2.2']


def test_training_resumes_past_a_damaged_newest_step_with_the_same_losses(
    data_dir, tmp_path, caplog
):
  # Imported here: the trainer pulls in the whole model and data pipeline.
  from attention_jax.train import trainer  # pylint: disable=g-import-not-at-top
  from experiments.configs import smoke  # pylint: disable=g-import-not-at-top

  config = smoke.get_config()
  config.data.data_dir = data_dir
  config.update_from_flattened_dict({
      'num_train_steps': 10, 'log_every': 1, 'checkpoint_every': 5,
      'eval_every': 1000, 'eval.valid_bleu': False,
      'eval.final_sentences': 8, 'eval.max_decode_len': 16,
  })
  workdir = tmp_path / 'run'
  trainer.train_and_evaluate(config, str(workdir))
  first = _logged_losses(workdir)
  damaged = workdir / 'checkpoints' / '10'
  _truncate_array(str(damaged))
  (workdir / 'results.json').unlink()

  with caplog.at_level(logging.INFO):
    results = trainer.train_and_evaluate(config, str(workdir))
  assert f'Checkpoint {damaged} does not restore' in caplog.text
  assert 'Resumed from step 5 ' in caplog.text
  assert results['steps'] == 10
  assert (workdir / checkpoint.DAMAGED_DIR / '10').is_dir()
  # Steps 6-10 trained again, to the same losses.
  again = _logged_losses(workdir)
  for step in range(6, 11):
    assert again[step] == pytest.approx(first[step], abs=1e-6), step


def _logged_losses(workdir):
  """The loss last logged for each step."""
  with open(workdir / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  return {r['step']: r['train/loss'] for r in records if 'train/loss' in r}
