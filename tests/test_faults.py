"""Real training processes preempted (SIGTERM), interrupted (SIGINT) or
killed (SIGKILL), resumed.

Each run is `launch.py` on the smoke config in a subprocess with 8 simulated
devices, as many as the in-process reference run that is never interrupted,
so resumed losses must match it to float32 precision. The two-process run
joins over jax.distributed on 127.0.0.1, as tests/test_multiprocess.py does.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from attention_jax.train import trainer
from experiments.configs import smoke
import smoke_runs

_TMP_MARK = 'orbax-checkpoint-tmp'
_OVERRIDES = {
    'num_train_steps': 60, 'log_every': 5, 'eval_every': 1000,
    'eval.bleu_sentences': 8, 'eval.final_sentences': 8,
    'eval.max_decode_len': 16,
}


@pytest.fixture(scope='module')
def reference_losses(data_dir, tmp_path_factory):
  """Losses of the uninterrupted run, in this process (8 devices)."""
  config = smoke.get_config()
  config.data.data_dir = data_dir
  config.update_from_flattened_dict(_OVERRIDES)
  workdir = tmp_path_factory.mktemp('reference')
  trainer.train_and_evaluate(config, str(workdir))
  return _losses(workdir)


@pytest.fixture
def launch(data_dir):
  """Starts `launch.py` runs; kills those still running when a test ends."""
  processes = []

  def start(workdir, log_path, devices=8, extra=()):
    with open(log_path, 'a') as log:
      processes.append(smoke_runs.start(
          workdir, data_dir, log, devices, _OVERRIDES, extra
      ))
    return processes[-1]

  yield start
  for process in processes:
    if process.poll() is None:
      process.kill()
      process.wait()


def _wait_until(process, condition, what):
  deadline = time.monotonic() + 300
  while not condition():
    assert process.poll() is None, f'exited ({process.poll()}) before {what}'
    assert time.monotonic() < deadline, f'timed out waiting for {what}'
    time.sleep(0.002)


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return {r['step']: r['train/loss'] for r in records if 'train/loss' in r}


def _has_logged(workdir):
  path = os.path.join(workdir, 'metrics.jsonl')
  return os.path.exists(path) and os.path.getsize(path) > 0


def _steps(checkpoints):
  return sorted(int(name) for name in os.listdir(checkpoints) if name.isdigit())


def _assert_matches_reference(workdir, reference, after_step):
  losses = _losses(workdir)
  common = sorted(set(losses) & set(reference))
  assert common[-1] == _OVERRIDES['num_train_steps'], losses
  assert any(step > after_step for step in common), (losses, after_step)
  for step in common:
    assert losses[step] == pytest.approx(reference[step], abs=1e-5), step


@pytest.mark.parametrize('signum, reason', [
    (signal.SIGTERM, 'Preempted (SIGTERM)'),
    (signal.SIGINT, 'Interrupted (SIGINT)'),
])
def test_signal_checkpoints_the_step_exits_cleanly_and_resumes(
    launch, reference_losses, tmp_path, signum, reason
):
  workdir, log = tmp_path / 'run', tmp_path / 'run.log'
  extra = ('--config.checkpoint_every=1000',)
  process = launch(workdir, log, extra=extra)
  _wait_until(process, lambda: _has_logged(workdir), 'the first log step')
  process.send_signal(signum)
  assert process.wait(timeout=300) == 0, log.read_text()[-3000:]

  stopped = max(_losses(workdir))
  assert stopped < _OVERRIDES['num_train_steps']
  assert _steps(workdir / 'checkpoints') == [stopped]
  assert (
      f'{reason} at step {stopped}; saved checkpoint '
      f'{workdir / "checkpoints" / str(stopped)}. Rerun the same command'
  ) in log.read_text()
  assert not (workdir / 'results.json').exists()
  assert not (workdir / 'translations').exists()

  assert launch(workdir, log, extra=extra).wait(timeout=600) == 0
  assert f'Resumed from step {stopped} ' in log.read_text()
  with open(workdir / 'results.json') as f:
    assert json.load(f)['steps'] == _OVERRIDES['num_train_steps']
  _assert_matches_reference(workdir, reference_losses, stopped)


def _kill_during_a_save(launch, workdir, log):
  """SIGKILLs a run the moment a save is under way after a finished one.

  Returns:
    The unfinished save directories left behind (empty if the save
    finished between being seen and the kill).
  """
  checkpoints = workdir / 'checkpoints'
  extra = ('--config.checkpoint_every=1',)
  process = launch(workdir, log, extra=extra)

  def saving_after_a_finished_step():
    try:
      names = os.listdir(checkpoints)
    except FileNotFoundError:
      return False
    return (any(_TMP_MARK in name for name in names)
            and any(name.isdigit() for name in names))

  _wait_until(process, saving_after_a_finished_step, 'a second save')
  process.kill()
  process.wait(timeout=60)
  return [name for name in os.listdir(checkpoints) if _TMP_MARK in name]


def test_sigkill_during_a_save_resumes_from_the_last_finished_one(
    launch, reference_losses, tmp_path
):
  for attempt in range(3):
    workdir, log = tmp_path / f'run{attempt}', tmp_path / f'run{attempt}.log'
    unfinished = _kill_during_a_save(launch, workdir, log)
    if unfinished:
      break
  assert unfinished, 'every kill came after the save had finished'
  finished = _steps(workdir / 'checkpoints')[-1]

  # A checkpoint interval may change on resume; a longer one saves time.
  restart = launch(workdir, log, extra=('--config.checkpoint_every=10',))
  assert restart.wait(timeout=600) == 0, log.read_text()[-3000:]
  output = log.read_text()
  assert f'Resumed from step {finished} ' in output
  assert 'Removing unfinished checkpoint save(s) of a killed run' in output
  assert unfinished[0] in output
  assert not any(
      _TMP_MARK in name for name in os.listdir(workdir / 'checkpoints')
  )
  _assert_matches_reference(workdir, reference_losses, finished)


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(
    launch, tmp_path
):
  port = smoke_runs.free_port()
  logs = [tmp_path / f'process_{i}.log' for i in range(2)]
  processes = [
      launch(tmp_path / 'run', logs[i], devices=2, extra=(
          '--config.num_train_steps=400', '--config.checkpoint_every=1000',
          f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
          f'--process_id={i}',
      ))
      for i in range(2)
  ]
  _wait_until(processes[0], lambda: _has_logged(tmp_path / 'run'),
              'the first log step')
  # Only process 1 hears it; JAX's preemption sync must stop process 0 too.
  processes[1].send_signal(signal.SIGTERM)
  codes = [p.wait(timeout=300) for p in processes]
  outputs = [log.read_text() for log in logs]
  assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  stopped = _steps(tmp_path / 'run' / 'checkpoints')
  assert len(stopped) == 1 and stopped[0] < 400, stopped
  for output in outputs:
    assert f'Preempted (SIGTERM) at step {stopped[0]};' in output


_ONE_POINT_STUDY = '''\
"""One point, long enough to be interrupted while it trains."""
from attention_jax.ablation import study
from experiments.configs import smoke
BASELINE = 'heads=4'


def get_config(arg=None):
  config = smoke.get_config(arg)
  config.num_train_steps = 60
  config.max_train_seconds = 0
  config.log_every = 1
  config.eval_every = 1000
  config.checkpoint_every = 1000
  config.eval.valid_bleu = False
  config.eval.final_sentences = 8
  config.eval.max_decode_len = 16
  return config


def sweep():
  return study.grid({'heads': ('model.num_heads', (4,))}, seeds=(0,))
'''


def test_ctrl_c_in_a_study_saves_the_point_which_then_resumes(
    data_dir, tmp_path
):
  study_file = tmp_path / 'one_point.py'
  study_file.write_text(_ONE_POINT_STUDY)
  workdir = tmp_path / 'study'
  point = workdir / 'points' / 'heads=4' / 'seed=0'
  flags = [f'--config={study_file}', f'--workdir={workdir}',
           f'--config.data.data_dir={data_dir}']
  log_path = tmp_path / 'study.log'
  with open(log_path, 'w') as log:
    # A terminal of its own: Ctrl-C reaches the study and its point.
    study = smoke_runs.launch(flags, log, start_new_session=True)
  try:
    _wait_until(study, lambda: _has_logged(point), 'the point\'s first step')
    os.killpg(study.pid, signal.SIGINT)
    assert study.wait(timeout=300) == 0, log_path.read_text()[-3000:]
  finally:
    if study.poll() is None:
      os.killpg(study.pid, signal.SIGKILL)
  output = log_path.read_text()
  assert 'heads=4/seed=0: interrupted after' in output, output[-3000:]
  assert 'FAILED' not in output
  assert not (point / 'error.json').exists()
  stopped = max(_losses(point))
  assert stopped < 60
  assert _steps(point / 'checkpoints') == [stopped]
  assert f'Interrupted (SIGINT) at step {stopped};' in (
      (point / 'log.txt').read_text())
  with open(point / 'attempts.jsonl') as f:
    assert [json.loads(line)['outcome'] for line in f] == ['preempted']

  with open(log_path, 'a') as log:
    assert smoke_runs.launch(flags, log).wait(timeout=600) == 0
  assert 'heads=4/seed=0: resuming' in log_path.read_text()
  assert f'Resumed from step {stopped} ' in (point / 'log.txt').read_text()
  with open(point / 'results.json') as f:
    assert json.load(f)['steps'] == 60


# launch.py with the disk full once a checkpoint is complete: every array
# write of a later save fails as TensorStore's does, in orbax's save thread.
_FULL_DISK_LAUNCH = '''\
import errno, os, runpy, sys
from orbax.checkpoint._src.serialization import serialization
checkpoints = os.path.join(sys.argv[1], 'checkpoints')
write = serialization.async_serialize_from_host


async def full_disk(*args, **kwargs):
  if any(name.isdigit() for name in os.listdir(checkpoints)):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), checkpoints)
  return await write(*args, **kwargs)


serialization.async_serialize_from_host = full_disk
sys.argv = ['launch.py', f'--workdir={sys.argv[1]}', *sys.argv[2:]]
runpy.run_path('launch.py', run_name='__main__')
'''


def test_disk_full_at_a_save_is_the_last_thing_said_and_nothing_is_lost(
    data_dir, tmp_path
):
  workdir = tmp_path / 'run'
  flags = ['--config=experiments/configs/smoke.py',
           f'--config.data.data_dir={data_dir}',
           '--config.num_train_steps=10', '--config.checkpoint_every=5',
           '--config.log_every=5', '--config.eval_every=1000',
           '--config.eval.final_sentences=8', '--config.eval.max_decode_len=16']
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  result = subprocess.run(
      [sys.executable, '-c', _FULL_DISK_LAUNCH, str(workdir), *flags],
      cwd=smoke_runs.REPO, env=env, capture_output=True, text=True,
      timeout=600,
  )
  assert result.returncode != 0
  checkpoints = workdir / 'checkpoints'
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('attention_jax.train.checkpoint.CheckpointSaveError: '
                         'No space left on device while saving a checkpoint '
                         f'in {checkpoints}'), result.stderr[-3000:]
  assert f'Free space on that disk (df -h {checkpoints})' in last
  assert f'rerun the same command: it resumes from {checkpoints / "5"}' in last
  assert 'NameError' not in result.stderr

  log = tmp_path / 'rerun.log'
  with open(log, 'w') as f:
    assert smoke_runs.launch([f'--workdir={workdir}', *flags], f).wait(
        timeout=600) == 0, log.read_text()[-3000:]
  assert 'Resumed from step 5 ' in log.read_text()
  with open(workdir / 'results.json') as f:
    assert json.load(f)['steps'] == 10
