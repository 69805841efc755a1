"""Joins a multi-process JAX run when flags or the environment ask for one."""

import contextlib
import os

from absl import flags
from absl import logging
import jax
from jax.experimental import multihost_utils
# Defines the orbax flag set below.
import orbax.checkpoint  # pylint: disable=unused-import


def _launched_by_cluster() -> bool:
  """True on a multi-host TPU slice, a SLURM job or an explicit coordinator."""
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    return True
  if int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    return True
  return ',' in os.environ.get('TPU_WORKER_HOSTNAMES', '')


def initialize(
    coordinator_address: str | None,
    num_processes: int | None,
    process_id: int | None,
) -> None:
  """Calls `jax.distributed.initialize` for multi-process runs only.

  Explicit flags win; otherwise JAX detects Cloud TPU slices and SLURM jobs
  from their environment. A single process on one machine starts nothing.
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if None in explicit:
      raise ValueError(
          'Set all of --coordinator_address, --num_processes and '
          '--process_id for a multi-process run, or none of them.'
      )
    if num_processes == 1:
      return
    # Only used when the processes run on CPU: collectives over gloo.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif _launched_by_cluster():
    jax.distributed.initialize()
  else:
    return
  # Orbax's default barrier is a collective over all devices. Called from its
  # background saving thread while the main thread runs training steps, the
  # two threads' collectives can reach the processes in different orders and
  # deadlock; the distributed client's barriers are safe across threads.
  flags.FLAGS.experimental_orbax_use_distributed_barrier = True
  logging.info(
      'Joined process group: process %d of %d.',
      jax.process_index(), jax.process_count(),
  )


@contextlib.contextmanager
def chief_first(what: str):
  """Runs the body on process 0 first, then on the others.

  For work that fills a cache other processes may share (a prepared dataset,
  a trained vocabulary): on a shared filesystem the others find it done, and
  no two processes ever write the same files at once.
  """
  if jax.process_count() > 1 and jax.process_index() != 0:
    multihost_utils.sync_global_devices(what)
  yield
  if jax.process_count() > 1 and jax.process_index() == 0:
    multihost_utils.sync_global_devices(what)
