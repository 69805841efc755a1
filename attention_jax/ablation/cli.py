"""The study side of launch.py: its flags, and what each asks of a process.

A config file with a `sweep()` is a study (`study.py`): every point trains
in DIR/points/<variant>/seed=<seed>, then DIR/report.md is written.
`--print_commands` lists one command per point instead, to spread them over
machines sharing DIR; `--mode=report --workdir=DIR` writes the report of
whatever has finished.
"""

import sys
from typing import Callable

from absl import app
from absl import flags
from ml_collections import config_flags

from attention_jax import run_records
from attention_jax.ablation import report
from attention_jax.ablation import runner
from attention_jax.ablation import study as study_lib

_POINT = flags.DEFINE_string(
    'point', None, 'Study only: train just this point, e.g. '
    '"attention=local/seed=1", in its sub-workdir of --workdir.',
)
_PRINT_COMMANDS = flags.DEFINE_bool(
    'print_commands', False,
    'Study only: print the command of every unfinished point instead of '
    'running them.',
)
_REUSE_FROM = flags.DEFINE_list(
    'reuse_from', [],
    'Study only: workdirs of other studies; a point whose exact config is '
    'finished in one of them is copied from there, not trained again.',
)
_EQUAL_TIME = flags.DEFINE_integer(
    'equal_time', 0,
    'Study only: compare points at this many seconds of training each '
    '(config.num_train_steps becomes an upper bound); fair only when every '
    'point has the machine to itself. 0: at equal steps, '
    'config.num_train_steps each.',
)


def report_workdir(workdir: str) -> None:
  """Writes the report of the study in `workdir` (--mode=report)."""
  try:
    report.write_report(workdir)
  except (FileNotFoundError, run_records.DamagedRecordError) as e:
    raise app.UsageError(str(e)) from None


def load(config: flags.FlagHolder) -> study_lib.Study | None:
  """The study named by the --config flag, or None for a plain config.

  Raises:
    app.UsageError: for a broken study file, or a study-only flag given
      with a plain config.
  """
  study = None
  if config.value is not None:
    path = config_flags.get_config_filename(flags.FLAGS[config.name])
    try:
      study = study_lib.load_if_study(path, config.value)
    except study_lib.StudyError as e:
      raise app.UsageError(str(e)) from None
    if study is None and (_POINT.value or _PRINT_COMMANDS.value
                          or _EQUAL_TIME.value or _REUSE_FROM.value):
      raise app.UsageError(
          '--point, --print_commands, --equal_time and --reuse_from are for '
          f'studies; {path} defines no sweep().'
      )
  if _EQUAL_TIME.value < 0:
    raise app.UsageError(f'--equal_time={_EQUAL_TIME.value}: must be >= 0.')
  return study


def run_points_elsewhere(study: study_lib.Study | None, workdir: str) -> bool:
  """Lists or runs the study's points, each in a process of its own.

  Returns:
    False when there is no study, or this process is to train one point
    itself (--point).
  """
  if study is None:
    return False
  config_args = [a for a in sys.argv if a.startswith('--config.')]
  if _PRINT_COMMANDS.value:
    runner.print_commands(study, workdir, config_args, _EQUAL_TIME.value)
    return True
  if _POINT.value:
    return False
  if runner.run_study(study, workdir, config_args, _EQUAL_TIME.value,
                      _REUSE_FROM.value):
    report.write_report(workdir)
  return True


def train_point(study: study_lib.Study, workdir: str,
                train: Callable[..., dict | None]) -> None:
  """Trains the --point of `study` in this process with `train`."""
  runner.run_point(study, workdir, _POINT.value, _EQUAL_TIME.value, train)
