"""Trains a model, runs a study, translates stdin, or looks inside attention.

  python launch.py --config=experiments/configs/bible.py --workdir=DIR
  python launch.py --config=experiments/ablations/attention.py --workdir=DIR
  python launch.py --mode=translate --workdir=DIR < spanish.txt
  python launch.py --mode=attend --workdir=DIR < spanish.txt
  python launch.py --mode=attention_stats --workdir=DIR --stats_split=test

A config with a `sweep()` is a study: see attention_jax/ablation/cli.py.
`kill -USR1 PID` prints every thread's Python stack to the log (for a run
that seems stuck, e.g. in a collective).
"""

# Before anything else: may restart this process (attention_jax/host_memory.py).
from attention_jax import host_memory
host_memory.reexec_with_huge_pages()

# pylint: disable=wrong-import-position
import faulthandler
import logging as stdlib_logging
import os
import signal
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

import attention_jax
from attention_jax import config_overrides
from attention_jax import distributed
from attention_jax import translate
from attention_jax.ablation import cli as study_cli
from attention_jax.maps import cli as maps_cli
from attention_jax.train import config_check
from attention_jax.train import run_config
from attention_jax.train import trainer
from attention_jax.train import workdir_lock

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory.', required=True)
_MODE = flags.DEFINE_enum(
    'mode', 'train',
    ['train', 'translate', 'report', 'attend', 'attention_stats'],
    'train: train the config (every point, for a study); translate: '
    'translate stdin with the model in --workdir; report: write the report '
    'of the study in --workdir; attend: attention maps of stdin\'s '
    'sentences; attention_stats: per-head attention summaries of a split.',
)
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None,
    'host:port of process 0, for multi-process runs that JAX cannot detect '
    'on its own (Cloud TPU slices and SLURM jobs need no flags).',
)
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Process count.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process index.')
flags.adopt_module_key_flags(study_cli)
flags.adopt_module_key_flags(maps_cli)

# Refusals before any work is done: a config that cannot run, a checkpoint
# of another config in the workdir, a workdir in use by another run.
_REFUSALS = (config_check.ConfigError, run_config.ResumeRefusedError,
             workdir_lock.WorkdirInUseError)

_OWN_CODE = os.path.dirname(os.path.abspath(attention_jax.__file__)) + os.sep
# Python deletes __file__ when the script ends; exit handlers still log.
_THIS_FILE = __file__


def _quiet_libraries(record) -> bool:
  """Keeps INFO lines of our own code; libraries only warn or worse."""
  ours = record.pathname.startswith(_OWN_CODE) or record.pathname == _THIS_FILE
  return ours or record.levelno >= stdlib_logging.WARNING


def main(argv):
  del argv
  faulthandler.register(signal.SIGUSR1, all_threads=True)
  logging.get_absl_handler().addFilter(_quiet_libraries)
  if _MODE.value == 'report':
    study_cli.report_workdir(_WORKDIR.value)
    return
  study = study_cli.load(_CONFIG)
  if study_cli.run_points_elsewhere(study, _WORKDIR.value):
    return
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                         _PROCESS_ID.value)
  logging.info('Process %d/%d, local devices %s, global devices %d.',
               jax.process_index(), jax.process_count(), jax.local_devices(),
               jax.device_count())
  logging.info('Host allocator: GLIBC_TUNABLES=%r (see host_memory.py).',
               os.environ.get('GLIBC_TUNABLES', ''))
  try:
    if _MODE.value == 'translate':
      translate.translate_stdin(_WORKDIR.value)
    elif _MODE.value == 'attend':
      maps_cli.attend_stdin(_WORKDIR.value)
    elif _MODE.value == 'attention_stats':
      maps_cli.stats(_WORKDIR.value)
    elif _CONFIG.value is None:
      raise app.UsageError('--config is required for --mode=train.')
    elif study is not None:
      study_cli.train_point(study, _WORKDIR.value, trainer.train_and_evaluate)
    else:
      trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except _REFUSALS as e:
    # The message names the problem and its fix; a traceback adds nothing.
    sys.exit(f'{type(e).__name__}: {e}')


if __name__ == '__main__':
  app.run(main, flags_parser=config_overrides.parse_flags)
