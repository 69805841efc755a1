"""Trains a translation model, runs a study, or translates stdin.

  python launch.py --config=experiments/configs/bible.py --workdir=DIR
  python launch.py --config=experiments/ablations/attention.py --workdir=DIR
  python launch.py --mode=translate --workdir=DIR < spanish.txt

A config file with a `sweep()` is a study (attention_jax/ablation/study.py):
every point trains in DIR/points/<variant>/seed=<seed>, then DIR/report.md
is written. `--print_commands` lists one command per point instead, to spread
them over machines sharing DIR; `--mode=report --workdir=DIR` writes the
report of whatever has finished.
"""

import logging as stdlib_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

import attention_jax
from attention_jax import distributed
from attention_jax import translate
from attention_jax.ablation import report
from attention_jax.ablation import runner
from attention_jax.ablation import study as study_lib
from attention_jax.train import trainer

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file.', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory.', required=True)
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'translate', 'report'],
    'train: train the config (every point, for a study); translate: '
    'translate stdin with the model in --workdir; report: write the report '
    'of the study in --workdir.',
)
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
    '(config.num_train_steps becomes an upper bound). 0: at equal steps, '
    'config.num_train_steps each.',
)
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None,
    'host:port of process 0, for multi-process runs that JAX cannot detect '
    'on its own (Cloud TPU slices and SLURM jobs need no flags).',
)
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Process count.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process index.')

_OWN_CODE = os.path.dirname(os.path.abspath(attention_jax.__file__)) + os.sep


def _quiet_libraries(record) -> bool:
  """Keeps INFO lines of our own code; libraries only warn or worse."""
  ours = record.pathname.startswith(_OWN_CODE) or record.pathname == __file__
  return ours or record.levelno >= stdlib_logging.WARNING


def _config_args(argv: list[str]) -> list[str]:
  """The --config.FIELD=VALUE overrides given on the command line."""
  return [a for a in argv if a.startswith('--config.')]


def _study() -> study_lib.Study | None:
  """The study named by --config, or None for a plain config."""
  if _CONFIG.value is None:
    return None
  path = config_flags.get_config_filename(flags.FLAGS['config'])
  try:
    study = study_lib.load_if_study(path, _CONFIG.value)
  except study_lib.StudyError as e:
    raise app.UsageError(str(e)) from None
  if study is None and (_POINT.value or _PRINT_COMMANDS.value
                        or _EQUAL_TIME.value or _REUSE_FROM.value):
    raise app.UsageError(
        '--point, --print_commands, --equal_time and --reuse_from are for '
        f'studies; {path} defines no sweep().'
    )
  return study


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(_quiet_libraries)
  if _MODE.value == 'report':
    try:
      report.write_report(_WORKDIR.value)
    except FileNotFoundError as e:
      raise app.UsageError(str(e)) from None
    return
  study = _study()
  if _EQUAL_TIME.value < 0:
    raise app.UsageError(f'--equal_time={_EQUAL_TIME.value}: must be >= 0.')
  if study is not None and _PRINT_COMMANDS.value:
    runner.print_commands(study, _WORKDIR.value, _config_args(sys.argv),
                          _EQUAL_TIME.value)
    return
  if study is not None and not _POINT.value:
    if runner.run_study(study, _WORKDIR.value, _config_args(sys.argv),
                        _EQUAL_TIME.value, _REUSE_FROM.value):
      report.write_report(_WORKDIR.value)
    return
  distributed.initialize(
      _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
  )
  logging.info(
      'Process %d/%d, local devices %s, global devices %d.',
      jax.process_index(), jax.process_count(), jax.local_devices(),
      jax.device_count(),
  )
  if _MODE.value == 'translate':
    translate.translate_stdin(_WORKDIR.value)
  elif _CONFIG.value is None:
    raise app.UsageError('--config is required for --mode=train.')
  elif study is not None:
    runner.run_point(study, _WORKDIR.value, _POINT.value, _EQUAL_TIME.value,
                     trainer.train_and_evaluate)
  else:
    trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
