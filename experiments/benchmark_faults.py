"""What surviving faults costs: checkpoint save and restore, preemption exit.

  python -m experiments.benchmark_faults
  python -m experiments.benchmark_faults --checkpoint_dir=/mnt/disk/bench \\
    --data_dir=~/tensorflow_datasets --sigterm_runs=5

Checkpoints: the training state of --config (parameters and Adam moments),
built on this process's devices as `attention_jax/train/trainer.py` builds
it, but without the dataset (the vocabulary size comes from the config), is
saved and restored through `Checkpointer` --repeats times. Shown: how long
`save` blocks the training loop, how long until the checkpoint is on disk,
and how long a restore takes. The first save and restore of a process are
cold (orbax compiles small per-shape computations, such as the slicing of
replicated arrays, the first time), as a preemption save right after a
resume is; they are shown apart from the median of the warm ones.

Preemption: a real smoke training run (`launch.py`, smoke config, in this
process's environment, so XLA_FLAGS sets its device count) gets SIGTERM once
it has logged its first step. Shown: seconds from `os.kill` to its
"Preempted ... saved checkpoint" log line and to its exit, per run.
"""

import datetime
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from attention_jax import config_overrides
from attention_jax import sharding
from attention_jax.model import from_config
from attention_jax.model.transformer import Transformer
from attention_jax.train import optim
from attention_jax.train import train_state
from attention_jax.train.checkpoint import Checkpointer

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'experiments/configs/bible.py',
    'Config whose training state is checkpointed.', lock_config=True,
)
_REPEATS = flags.DEFINE_integer(
    'repeats', 5, 'Warm save/restore rounds after the cold one.'
)
_CHECKPOINT_DIR = flags.DEFINE_string(
    'checkpoint_dir', None,
    'A directory on the disk under test; the checkpoints go to a temporary '
    'directory inside it, removed at the end. Default: the system temp.',
)
_SIGTERM_RUNS = flags.DEFINE_integer(
    'sigterm_runs', 3, 'Smoke training runs to preempt; 0 skips them.'
)
_DATA_DIR = flags.DEFINE_string(
    'data_dir', '~/tensorflow_datasets',
    'config.data.data_dir of the smoke runs (prepared on first use).',
)

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_state(config):
  cfg = from_config.transformer_config(config, config.data.vocab_size)
  tx, _ = optim.make_optimizer(config)
  mesh = sharding.make_mesh(config.mesh)
  return train_state.create(
      Transformer(cfg), tx, config.seed, mesh, config.data.max_len,
      sharding.logical_rules(config.mesh),
  )


def _time_checkpoints(workdir: str, state, shardings) -> list[tuple]:
  """(save blocks, save on disk, restore) seconds of each round."""
  rounds = _REPEATS.value + 1
  # Keeping every round's checkpoint keeps deletions out of the timings.
  checkpointer = Checkpointer(workdir, keep=rounds)
  times = []
  for step in range(1, rounds + 1):
    start = time.perf_counter()
    checkpointer.save(step, state, {'train_seconds': 0.0})
    returned = time.perf_counter()
    checkpointer.wait()
    on_disk = time.perf_counter()
    restored, _ = checkpointer.restore(step, state, shardings)
    jax.block_until_ready(restored)
    times.append(
        (returned - start, on_disk - start, time.perf_counter() - on_disk)
    )
  checkpointer.close()
  return times


def _print_checkpoint_times(workdir: str) -> None:
  state, shardings = _train_state(_CONFIG.value)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  megabytes = sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20
  config_file = config_flags.get_config_filename(flags.FLAGS['config'])
  print(f'Training state of {config_file}: '
        f'{num_params:,} parameters, {megabytes:.1f} MiB with optimizer '
        f'state, on {jax.device_count()} {jax.devices()[0].platform} '
        f'device(s); checkpoints in {workdir}/checkpoints.')
  times = _time_checkpoints(workdir, state, shardings)
  print(f"{'':>14} {'cold':>8} {f'median of {_REPEATS.value}':>14}")
  for column, name in enumerate(('save blocks', 'save on disk', 'restore')):
    warm = statistics.median(t[column] for t in times[1:])
    print(f'{name:>14} {times[0][column]:7.3f}s {warm:13.3f}s', flush=True)


# An absl log line starts with its level letter and local month, day, time.
_LOG_TIME = re.compile(r'^[IWEF](\d{4} \d\d:\d\d:\d\d\.\d+) ', re.M)


def _log_time(line: str) -> float:
  stamp = _LOG_TIME.match(line).group(1)
  year = datetime.date.today().year
  return datetime.datetime.strptime(
      f'{year}{stamp}', '%Y%m%d %H:%M:%S.%f'
  ).timestamp()


def _preempt_smoke_run(workdir: str) -> tuple[float, float, int]:
  """Seconds from SIGTERM to the checkpoint-saved log line and to exit."""
  command = [
      sys.executable, 'launch.py', '--config=experiments/configs/smoke.py',
      f'--workdir={workdir}', f'--config.data.data_dir={_DATA_DIR.value}',
      '--config.num_train_steps=1000000', '--config.log_every=5',
      '--config.checkpoint_every=1000000', '--config.eval_every=1000000',
  ]
  metrics = os.path.join(workdir, 'metrics.jsonl')
  log_path = workdir + '.log'
  with open(log_path, 'w') as log:
    process = subprocess.Popen(
        command, cwd=_REPO, stdout=log, stderr=subprocess.STDOUT
    )
    while not (os.path.exists(metrics) and os.path.getsize(metrics)):
      if process.poll() is not None:
        break
      time.sleep(0.005)
    killed = time.time()
    process.send_signal(signal.SIGTERM)
    code = process.wait()
    exited = time.time()
  with open(log_path) as f:
    output = f.read()
  saved = re.findall(r'^.*Preempted \(SIGTERM\) at step.*$', output, re.M)
  if code != 0 or not saved:
    raise RuntimeError(
        f'The smoke run did not stop cleanly (exit status {code}):\n'
        + output[-3000:]
    )
  step = int(re.search(r'at step (\d+)', saved[0]).group(1))
  return _log_time(saved[0]) - killed, exited - killed, step


def _print_sigterm_times(root: str) -> None:
  print(f'\nSIGTERM to a smoke training run after its first log step '
        f'({_SIGTERM_RUNS.value} runs):')
  print(f"{'run':>5} {'stopped at':>10} {'saved':>8} {'exited':>8}")
  runs = []
  for index in range(_SIGTERM_RUNS.value):
    saved, exited, step = _preempt_smoke_run(
        os.path.join(root, f'smoke_{index}')
    )
    runs.append((saved, exited))
    print(f'{index:>5} {step:>10} {saved:7.2f}s {exited:7.2f}s', flush=True)
  print(f"{'median':>16} {statistics.median(r[0] for r in runs):7.2f}s "
        f'{statistics.median(r[1] for r in runs):7.2f}s')


def main(argv) -> None:
  del argv
  # Orbax logs every stage of every save at INFO.
  logging.set_verbosity(logging.WARNING)
  with tempfile.TemporaryDirectory(dir=_CHECKPOINT_DIR.value) as workdir:
    _print_checkpoint_times(workdir)
  if _SIGTERM_RUNS.value:
    with tempfile.TemporaryDirectory() as root:
      _print_sigterm_times(root)


if __name__ == '__main__':
  app.run(main, flags_parser=config_overrides.parse_flags)
