"""One run per workdir: a second run is refused; a dead run's lock is free."""

import json
import os
import signal
import time

import pytest

from attention_jax.ablation import runner
from attention_jax.ablation import study as study_lib
from attention_jax.train import workdir_lock
import smoke_runs

_STUDY = '''\
"""A study that trains nothing: its lock is refused first."""
from attention_jax.ablation import study
from experiments.configs import smoke
BASELINE = 'heads=4'


def get_config(arg=None):
  return smoke.get_config(arg)


def sweep():
  return study.grid({'heads': ('model.num_heads', (4,))}, seeds=(0,))
'''


def _wait_for_metrics(process, workdir, log_path):
  metrics = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.monotonic() + 300
  while not (os.path.exists(metrics) and os.path.getsize(metrics)):
    assert process.poll() is None, log_path.read_text()[-3000:]
    assert time.monotonic() < deadline, 'the first run never logged a step'
    time.sleep(0.05)


def test_second_training_process_is_refused_and_a_killed_one_holds_nothing(
    data_dir, tmp_path
):
  workdir = tmp_path / 'run'
  overrides = {'num_train_steps': 100000, 'log_every': 1,
               'checkpoint_every': 100000, 'eval_every': 100000}
  first_log = tmp_path / 'first.log'
  with open(first_log, 'w') as log:
    first = smoke_runs.start(workdir, data_dir, log, 1, overrides)
  try:
    _wait_for_metrics(first, workdir, first_log)
    second_log = tmp_path / 'second.log'
    with open(second_log, 'w') as log:
      second = smoke_runs.start(workdir, data_dir, log, 1, overrides)
      assert second.wait(timeout=300) != 0
    refusal = second_log.read_text().strip().splitlines()[-1]
    assert f'{workdir} is in use by another run (pid {first.pid} ' in refusal
    assert 'or use another --workdir' in refusal
    assert first.poll() is None, 'the refused run disturbed the first'
    # The second run wrote nothing: the first alone logs every step once.
    with open(workdir / 'metrics.jsonl') as f:
      steps = [json.loads(line)['step'] for line in f]
    assert len(steps) == len(set(steps))
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  # The killed run's lock file is left behind, unlocked.
  assert (workdir / '.lock.process_0').exists()
  with workdir_lock.hold(str(workdir), '.lock.process_0'):
    pass


def test_each_process_of_a_multi_process_run_locks_its_own_file(tmp_path):
  with workdir_lock.hold(str(tmp_path), '.lock.process_0'):
    with workdir_lock.hold(str(tmp_path), '.lock.process_1'):
      with pytest.raises(workdir_lock.WorkdirInUseError):
        with workdir_lock.hold(str(tmp_path), '.lock.process_1'):
          pass


def test_a_second_study_on_a_workdir_in_use_is_refused(tmp_path):
  path = tmp_path / 'lock_study.py'
  path.write_text(_STUDY)
  study = study_lib.load(str(path))
  workdir = str(tmp_path / 'study')
  with workdir_lock.hold(workdir, '.lock.study'):
    with pytest.raises(workdir_lock.WorkdirInUseError, match='in use by'):
      runner.run_study(study, workdir, [], 0)
  assert not os.path.exists(os.path.join(workdir, 'study.json'))
  assert not os.path.exists(os.path.join(workdir, 'points'))
