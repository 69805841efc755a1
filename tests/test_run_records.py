"""Run records: written whole, a damaged one named, each step logged once."""

import errno
import glob
import json
import os

import jax.numpy as jnp
import pytest
import event_files

from attention_jax import run_records
from attention_jax import sharding
from attention_jax import translate
from attention_jax.ablation import report
from attention_jax.ablation import runner
from attention_jax.ablation import study as study_lib
from attention_jax.train import run_config
from attention_jax.train import trainer
from attention_jax.train.checkpoint import Checkpointer
from attention_jax.train.metrics_writer import MetricsWriter
from experiments.configs import smoke


class _Killed(BaseException):
  """The process died here: nothing after this point runs."""


def _kill_writes_midway(monkeypatch):
  """os.write writes half of what it is given, then the process 'dies'."""
  real_write = os.write

  def write(fd, data):
    real_write(fd, bytes(data)[:len(data) // 2])
    raise _Killed()

  monkeypatch.setattr(os, 'write', write)


def _write_study(tmp_path) -> study_lib.Study:
  path = tmp_path / 'study.py'
  path.write_text(
      'from attention_jax.ablation import study\n'
      'from experiments.configs import smoke\n'
      "BASELINE = 'a=softmax'\n"
      'def get_config(arg=None):\n'
      '  return smoke.get_config(arg)\n'
      'def sweep():\n'
      "  return study.grid({'a': ('model.attention', ('softmax', 'linear'))},"
      ' seeds=(0,))\n'
  )
  return study_lib.load(str(path))


def _rewrite_config(tmp_path):
  config = smoke.get_config()
  config.num_train_steps = 7
  run_config.record(config, str(tmp_path))


def _rewrite_manifest(tmp_path):
  runner.write_manifest(_write_study(tmp_path), str(tmp_path), ['--x=1'], 0)


def _rewrite_results(tmp_path):
  run_records.write_json(str(tmp_path / 'results.json'), {'test_bleu': 9.0})


@pytest.mark.parametrize('name, rewrite', [
    ('config.json', _rewrite_config),
    ('study.json', _rewrite_manifest),
    ('results.json', _rewrite_results),
])
def test_a_write_killed_midway_leaves_the_previous_record_whole(
    tmp_path, monkeypatch, name, rewrite
):
  before = b'{"written": "by the run before"}'
  (tmp_path / name).write_bytes(before)
  with monkeypatch.context() as patch:
    _kill_writes_midway(patch)
    with pytest.raises(_Killed):
      rewrite(tmp_path)
  assert (tmp_path / name).read_bytes() == before
  assert not glob.glob(str(tmp_path / '.*.tmp'))
  rewrite(tmp_path)  # The next run writes it whole.
  assert json.loads((tmp_path / name).read_bytes()) != json.loads(before)


def test_an_append_killed_midway_is_skipped_then_cut_off(tmp_path,
                                                         monkeypatch):
  path = str(tmp_path / 'attempts.jsonl')
  run_records.append_jsonl(path, {'outcome': 'failed'})
  with monkeypatch.context() as patch:
    _kill_writes_midway(patch)
    with pytest.raises(_Killed):
      run_records.append_jsonl(path, {'outcome': 'preempted'})
  assert run_records.read_jsonl(path) == [{'outcome': 'failed'}]
  run_records.append_jsonl(path, {'outcome': 'done'})
  assert run_records.read_jsonl(path) == [{'outcome': 'failed'},
                                          {'outcome': 'done'}]


def test_a_full_disk_keeps_the_previous_record_and_names_the_file(
    tmp_path, monkeypatch
):
  path = str(tmp_path / 'results.json')
  run_records.write_json(path, {'steps': 10})
  real_write = os.write

  def write(fd, data):
    real_write(fd, bytes(data)[:len(data) // 2])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  with monkeypatch.context() as patch:
    patch.setattr(os, 'write', write)
    with pytest.raises(OSError, match='No space left') as error:
      run_records.write_json(path, {'steps': 20})
    assert error.value.filename == path
    log = str(tmp_path / 'metrics.jsonl')
    with pytest.raises(OSError, match='No space left') as error:
      run_records.append_jsonl(log, {'step': 1})
    assert error.value.filename == log
  assert run_records.read_json(path, '') == {'steps': 10}
  assert not glob.glob(str(tmp_path / '.*.tmp'))


def _checkpointed_workdir(tmp_path, config):
  """A workdir holding a checkpoint (of a toy state) and `config`'s record."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  run_config.record(config, str(workdir))
  checkpointer = Checkpointer(str(workdir), keep=1)
  checkpointer.save(1, {'w': jnp.zeros(3)}, {'train_seconds': 1.0})
  checkpointer.wait()
  checkpointer.close()
  return workdir


@pytest.mark.parametrize('damage', [b'', b'{"model": {"attention": "so'])
def test_a_damaged_config_json_is_named_with_the_fix(tmp_path, damage):
  workdir = _checkpointed_workdir(tmp_path, smoke.get_config())
  (workdir / 'config.json').write_bytes(damage)
  (workdir / 'vocab.model').write_bytes(b'')
  config_path = str(workdir / 'config.json')
  with pytest.raises(run_records.DamagedRecordError) as resumed:
    trainer.train_and_evaluate(smoke.get_config(), str(workdir))
  mesh = sharding.make_mesh(smoke.get_config().mesh)
  with pytest.raises(run_records.DamagedRecordError) as translated:
    translate.load_params(str(workdir), mesh)
  for error in (resumed, translated):
    message = str(error.value)
    assert config_path in message and 'Remove it and rerun' in message
    assert not isinstance(error.value.__cause__, json.JSONDecodeError)
  assert (workdir / 'config.json').read_bytes() == damage


def test_a_resume_that_fails_to_restore_leaves_config_json_as_it_was(
    tmp_path, data_dir
):
  config = smoke.get_config()
  config.data.data_dir = data_dir
  # Only the run length differs: the resume passes the config check.
  workdir = _checkpointed_workdir(tmp_path, config)
  before = (workdir / 'config.json').read_bytes()
  config.num_train_steps = 7
  # The checkpoint holds a toy state, not this model's: restoring it fails.
  with pytest.raises(Exception):
    trainer.train_and_evaluate(config, str(workdir))
  assert (workdir / 'config.json').read_bytes() == before


def _point_with_results(tmp_path, results: bytes):
  study = _write_study(tmp_path)
  workdir = str(tmp_path / 'study')
  runner.write_manifest(study, workdir, [], 0)
  path = runner.point_dir(workdir, study.points[1])
  os.makedirs(os.path.join(path, 'checkpoints', '10'))
  with open(os.path.join(path, 'results.json'), 'wb') as f:
    f.write(results)
  return study, workdir, path


@pytest.mark.parametrize('damage', [b'', b'{"test_bleu": 3.1, "eval_lo'])
def test_a_damaged_results_json_is_an_unfinished_point(tmp_path, damage):
  study, workdir, path = _point_with_results(tmp_path, damage)
  assert runner.status(path) == runner.INTERRUPTED
  assert runner.finished_twin(
      runner.budgeted_config(study, study.points[1], 0), [workdir]) is None
  text = report.write_report(workdir, num_samples=10)
  assert '## Unfinished points' in text
  unfinished = text[text.index('## Unfinished points'):]
  assert f'{study.points[1].name}: interrupted' in unfinished
  assert os.path.join(path, 'results.json') in unfinished
  assert 'rerunning the study trains it again' in unfinished


def _events(directory):
  """(step, what) of every event in a tensorboardX event directory."""
  return [(event.step, event.WhichOneof('what'))
          for name in sorted(os.listdir(directory))
          for event in event_files.read_events(os.path.join(directory, name))]


def test_a_resume_forgets_the_metrics_logged_after_its_checkpoint(tmp_path):
  workdir = str(tmp_path)
  writer = MetricsWriter(workdir, enabled=True)
  for step in (5, 10):
    writer.write(step, {'train/target_tokens_per_sec': float(step)})
  writer.write(10, {'test_bleu': 1.0})
  writer.close()

  # Killed after step 10 was logged, before its checkpoint: resumed at 5.
  writer = MetricsWriter(workdir, enabled=True, start_step=5)
  writer.write(10, {'train/target_tokens_per_sec': 30.0})
  writer.close()
  logged = run_records.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  assert logged == [{'step': 5, 'train/target_tokens_per_sec': 5.0},
                    {'step': 10, 'train/target_tokens_per_sec': 30.0}]
  # The average throughput counts step 10 once, at its replayed rate.
  mean_rate = trainer._mean_tokens_per_sec  # pylint: disable=protected-access
  assert mean_rate(workdir) == 17.5
  # TensorBoard hides the earlier run's events from step 6 on.
  assert (6, 'session_log') in _events(os.path.join(workdir, 'tensorboard'))


def test_training_on_from_an_older_checkpoint_drops_what_it_replays(
    tmp_path, data_dir, monkeypatch
):
  config = smoke.get_config()
  config.data.data_dir = data_dir
  config.num_train_steps = 15
  config.log_every = config.checkpoint_every = 5
  config.eval_every = 100
  workdir = tmp_path / 'run'
  stop_at = 10
  monkeypatch.setattr(trainer.preemption.PreemptionWatcher, 'should_stop',
                      lambda self, step: step == stop_at)
  assert trainer.train_and_evaluate(config, str(workdir)) is None
  # As an earlier end at step 10 leaves it (final evaluation skipped here).
  run_records.write_json(str(workdir / 'results.json'), {'steps': 10})

  # Killed after step 10's save began, before it finished: resumed at 5, to
  # train on to 15. SIGTERM comes at step 12.
  checkpoint = workdir / 'checkpoints' / '10'
  checkpoint.rename(workdir / 'checkpoints' / '10.orbax-checkpoint-tmp-1')
  stop_at = 12
  assert trainer.train_and_evaluate(config, str(workdir)) is None
  assert not (workdir / 'results.json').exists()  # Stale: it was of step 10.
  logged = run_records.read_jsonl(str(workdir / 'metrics.jsonl'))
  assert [r['step'] for r in logged] == [5, 10, 12]
