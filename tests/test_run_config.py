"""A checkpoint is resumed only under a config that keeps what defines it."""

import json

import jax.numpy as jnp
import pytest

from attention_jax.train import run_config
from attention_jax.train import trainer
from attention_jax.train import translation_task
from attention_jax.train.checkpoint import Checkpointer
from experiments.configs import smoke


class _DataLoaded(Exception):
  """Raised in place of loading the dataset: the checks were passed."""


@pytest.fixture
def no_data(monkeypatch):
  def load(*args, **kwargs):
    raise _DataLoaded()

  monkeypatch.setattr(translation_task.input_pipeline, 'load', load)


def _first_run(tmp_path, config, checkpoint=True):
  """The workdir that a first run of `config` leaves."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  run_config.record(config, str(workdir))
  if checkpoint:
    checkpointer = Checkpointer(str(workdir), keep=1)
    checkpointer.save(1, {'w': jnp.zeros(3)}, {'train_seconds': 1.0})
    checkpointer.wait()
    checkpointer.close()
  return workdir


def _recorded(workdir):
  with open(workdir / 'config.json') as f:
    return json.load(f)


def test_incompatible_config_is_refused_before_anything_is_built(
    tmp_path, no_data
):
  workdir = _first_run(tmp_path, smoke.get_config())
  config = smoke.get_config()
  config.model.num_heads = 2
  config.data.vocab_size = 2000
  config.batch_size = 32
  config.num_train_steps = 7
  config.model.dtype = 'bfloat16'
  with pytest.raises(run_config.ResumeRefusedError) as error:
    trainer.train_and_evaluate(config, str(workdir))
  message = str(error.value)
  for change in ('config.model.num_heads: 4 -> 2',
                 'config.data.vocab_size: 1000 -> 2000',
                 'config.batch_size: 16 -> 32'):
    assert change in message, message
  assert 'num_train_steps' not in message and 'dtype' not in message
  assert 'new --workdir' in message and 'set the fields back' in message
  assert _recorded(workdir)['model']['num_heads'] == 4


def test_without_a_checkpoint_any_config_starts(tmp_path, no_data):
  workdir = _first_run(tmp_path, smoke.get_config(), checkpoint=False)
  config = smoke.get_config()
  config.model.num_heads = 2
  with pytest.raises(_DataLoaded):
    trainer.train_and_evaluate(config, str(workdir))
  # Recorded only once the run has its state (tests/test_run_records.py).
  assert _recorded(workdir)['model']['num_heads'] == 4


def test_fields_free_to_change_on_resume_are_accepted(tmp_path):
  workdir = _first_run(tmp_path, smoke.get_config(), checkpoint=False)
  config = smoke.get_config()
  config.update_from_flattened_dict({
      'num_train_steps': 10_000, 'max_train_seconds': 60,
      'log_every': 1, 'eval_every': 7, 'checkpoint_every': 3,
      'keep_checkpoints': 9, 'data.data_dir': '/elsewhere',
      'eval.beam_size': 8, 'eval.max_decode_len': 200,
      'optimizer.learning_rate': 1e-4, 'label_smoothing': 0.0,
      'mesh.data': 2, 'mesh.fsdp': -1,
      'model.dtype': 'bfloat16', 'model.implementation': 'xla',
      'model.dropout_rate': 0.3,
      'model.attention_dropout_rate': 0.0,
  })
  run_config.check_resumable(config, str(workdir))


@pytest.mark.parametrize('scheme, refused', [('learned', True),
                                             ('sinusoidal', False)])
def test_decode_length_is_fixed_only_by_learned_positions(
    tmp_path, scheme, refused
):
  config = smoke.get_config()
  config.model.position_scheme = scheme
  workdir = _first_run(tmp_path, config, checkpoint=False)
  config.eval.max_decode_len = 2 * config.eval.max_decode_len
  if refused:
    with pytest.raises(ValueError, match='eval.max_decode_len: 64 -> 128'):
      run_config.check_resumable(config, str(workdir))
  else:
    run_config.check_resumable(config, str(workdir))


def test_options_of_mechanisms_in_use_are_model_fields(tmp_path):
  """Options follow from the registry: those of a mechanism in use are fixed
  unless it declares them computation-only; those of unused ones are free."""
  config = smoke.get_config()
  config.model.attention = 'local'
  workdir = _first_run(tmp_path, config, checkpoint=False)
  free = smoke.get_config()
  free.model.attention = 'local'
  free.model.options.local.chunk_size = 7  # In Local.RESUMABLE_FIELDS.
  free.model.options.performer.num_random_features = 3  # Not in use.
  free.model.position_options.relative_bias.num_buckets = 8  # Not in use.
  run_config.check_resumable(free, str(workdir))
  fixed = smoke.get_config()
  fixed.model.attention = 'local'
  fixed.model.options.local.window_size = 8
  with pytest.raises(ValueError,
                     match='config.model.options.local.window_size: 64 -> 8'):
    run_config.check_resumable(fixed, str(workdir))


def test_position_options_of_the_scheme_in_use_are_model_fields(tmp_path):
  config = smoke.get_config()
  config.model.position_scheme = 'relative_bias'
  workdir = _first_run(tmp_path, config, checkpoint=False)
  config.model.position_options.relative_bias.num_buckets = 16
  with pytest.raises(
      ValueError,
      match='config.model.position_options.relative_bias.num_buckets: 32 -> 16'):
    run_config.check_resumable(config, str(workdir))


def test_workdir_from_before_the_attention_contract_is_refused(tmp_path,
                                                                no_data):
  """Its config.json has the old global option fields and mechanism names."""
  workdir = _first_run(tmp_path, smoke.get_config())
  old = _recorded(workdir)
  model = old['model']
  del model['options'], model['position_options']
  model.update(attention='dot_product', window_size=64, chunk_size=512,
               num_random_features=256, relative_num_buckets=32,
               relative_max_distance=128)
  (workdir / 'config.json').write_text(json.dumps(old))
  with pytest.raises(ValueError, match='before mechanisms carried their own'
                     ' options.*commit 4294743'):
    trainer.train_and_evaluate(smoke.get_config(), str(workdir))
  assert _recorded(workdir) == old
