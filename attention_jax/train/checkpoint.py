"""Orbax checkpoints of the training state and the data stream position.

Orbax writes each step into a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint intact;
the unfinished directory is never listed as a step.

A finished step can still be damaged later (a truncated or missing array
file, an emptied step directory, a damaged metadata file, a missing data
stream item). Restoring tries the steps newest first and takes the newest
that restores, warning about each newer one. The training run moves such a
step aside into `workdir/checkpoints_damaged/` (never deleted: it is the
user's data to inspect or remove), so the run can save that step again. A
step is moved only when an older one restores: when none does, the cause is
more likely a change of code or config than damage, and nothing is moved;
the error names every step and the fix.
"""

import errno
import glob
import os
import shutil
from typing import Any, Callable, TypeVar

from absl import logging
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

_T = TypeVar('_T')
DAMAGED_DIR = 'checkpoints_damaged'


class CheckpointRestoreError(RuntimeError):
  """No checkpoint of a workdir restores."""


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written."""


class Checkpointer:
  """Saves and restores (train state, data stream state) pairs by step."""

  def __init__(self, workdir: str, keep: int, remove_unfinished: bool = False):
    """Opens (and creates) `workdir/checkpoints`.

    Args:
      workdir: the run directory; checkpoints go to its `checkpoints/`.
      keep: how many of the newest checkpoints to keep.
      remove_unfinished: delete the temporary directories of saves that a
        killed process left behind. Orbax removes one only when the same
        step is saved again, which never happens to a save at an odd step
        (preemption, time limit). Only the run that writes checkpoints may
        ask: a reader, such as translation, would delete a save in progress.
        The same run moves damaged steps aside (see the module docstring).
    """
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self._is_writer = remove_unfinished
    if remove_unfinished and jax.process_index() == 0:
      unfinished = glob.glob(
          os.path.join(self.directory, '*.orbax-checkpoint-tmp*')
      )
      if unfinished:
        logging.warning(
            'Removing unfinished checkpoint save(s) of a killed run: %s',
            ', '.join(sorted(unfinished)),
        )
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True,
            cleanup_tmp_directories=remove_unfinished,
        ),
        item_names=('state', 'data'),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """The saved steps, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict[str, int]) -> None:
    """Starts an asynchronous save; `wait()` blocks until it is on disk.

    Raises:
      CheckpointSaveError: this or the previous save failed (a full disk).
    """
    try:
      self._manager.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(state),
              data=ocp.args.JsonSave(data_state),
          ),
          force=True,
      )
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(e) from e

  def restore_latest(
      self, abstract_state: Any, shardings: Any
  ) -> tuple[int, Any, dict] | None:
    """(step, state, data state) of the newest step that restores.

    Newer steps that do not restore are named in a warning and, in the run
    that writes checkpoints, moved to `workdir/checkpoints_damaged/`.

    Returns:
      None when there is no checkpoint.

    Raises:
      CheckpointRestoreError: when no step restores, naming each and the fix.
    """
    found = self._restore_newest(
        lambda step: self.restore(step, abstract_state, shardings)
    )
    if found is None:
      return None
    step, (state, data) = found
    return step, state, data

  def restore_params_latest(
      self, abstract_params: Any, shardings: Any
  ) -> tuple[int, Any] | None:
    """(step, params) of the newest step whose parameters restore.

    A reader: damaged newer steps are named in a warning but not moved.
    """
    return self._restore_newest(
        lambda step: self.restore_params(step, abstract_params, shardings)
    )

  def _restore_newest(
      self, restore_step: Callable[[int], _T]
  ) -> tuple[int, _T] | None:
    """The newest step that `restore_step` restores, and what it returned."""
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      return None
    failures = []
    for step in steps:
      try:
        restored = restore_step(step)
      except Exception as e:  # pylint: disable=broad-except
        # Orbax and TensorStore raise many types for a damaged file.
        failures.append((step, f'{type(e).__name__}: {e}'.splitlines()[0]))
        continue
      if failures:
        self._set_aside(failures, step)
      return step, restored
    raise CheckpointRestoreError(
        f'No checkpoint in {self.directory} restores:\n'
        + ''.join(f'  {self.path(s)}: {_shorten(why)}\n' for s, why in failures)
        + 'If the code or the config changed since these were written, go '
        'back to those. If they are damaged, move the directory aside (mv '
        f'{self.directory} {self.directory}.damaged) to train from scratch, '
        'or use a new --workdir.'
    )

  def _set_aside(self, failures: list[tuple[int, str]], good: int) -> None:
    """Warns about steps that failed; the writer moves them out of the way."""
    moved_to = {}
    if self._is_writer:
      damaged = os.path.join(os.path.dirname(self.directory), DAMAGED_DIR)
      for step, _ in failures:
        moved_to[step] = _free_name(os.path.join(damaged, str(step)))
        if jax.process_index() == 0:
          os.makedirs(damaged, exist_ok=True)
          shutil.move(self.path(step), moved_to[step])
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices('checkpoints set aside')
      self._manager.reload()
    for step, why in failures:
      logging.warning(
          'Checkpoint %s does not restore (%s); %s. Using step %d instead.',
          self.path(step), _shorten(why),
          f'moved to {moved_to[step]}, delete it once no longer needed'
          if step in moved_to else 'left in place', good,
      )

  def restore(
      self, step: int, abstract_state: Any, shardings: Any
  ) -> tuple[Any, dict]:
    """Restores `step` into the given shapes and shardings."""
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_target(abstract_state, shardings)),
            data=ocp.args.JsonRestore(),
        ),
    )
    return restored['state'], restored['data']

  def restore_params(
      self, step: int, abstract_params: Any, shardings: Any
  ) -> Any:
    """Restores only the parameters of `step`'s training state.

    Inference needs neither the optimizer state, whose structure only the
    optimizer knows, nor the data stream position: neither is read.
    """
    target = {'params': _target(abstract_params, shardings)}
    # A reader of its own: the manager's handler for 'state' is fixed by
    # the first save or restore, and a partial restore needs another one.
    with ocp.PyTreeCheckpointer() as reader:
      restored = reader.restore(
          os.path.join(self.path(step), 'state'),
          args=ocp.args.PyTreeRestore(
              target,
              restore_args=ocp.checkpoint_utils.construct_restore_args(target),
              partial_restore=True,
          ),
      )
    return restored['params']

  def wait(self) -> None:
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(e) from e

  def _save_error(self, error: Exception) -> 'CheckpointSaveError':
    """The failure of a save, saying where and what to do.

    Orbax reports a full disk as TensorStore's RESOURCE_EXHAUSTED or an
    OSError, after its own tracebacks; this one is what the user reads last.
    """
    finished = sorted(
        int(name) for name in os.listdir(self.directory) if name.isdigit()
    )
    resume = (f'it resumes from {self.path(finished[-1])}' if finished
              else 'no checkpoint is complete, so it starts again')
    cause = _shorten(_root_cause(error))
    if _is_disk_full(error):
      return CheckpointSaveError(
          f'No space left on device while saving a checkpoint in '
          f'{self.directory} ({cause}). Free space on that disk (df -h '
          f'{self.directory}), lower config.keep_checkpoints, or move the '
          f'workdir to a larger disk; then rerun the same command: {resume}.'
      )
    return CheckpointSaveError(
        f'Saving a checkpoint in {self.directory} failed ({cause}). Fix the '
        f'cause, then rerun the same command: {resume}.'
    )

  def close(self) -> None:
    self._manager.close()

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))


def _chain(error: BaseException):
  while error is not None:
    yield error
    error = error.__cause__ or error.__context__


def _root_cause(error: BaseException) -> str:
  root = list(_chain(error))[-1]
  return f'{type(root).__name__}: {root}'.splitlines()[0]


def _is_disk_full(error: BaseException) -> bool:
  return any(
      getattr(e, 'errno', None) == errno.ENOSPC
      or 'No space left on device' in str(e)
      for e in _chain(error)
  )


def _shorten(text: str, limit: int = 300) -> str:
  return text if len(text) <= limit else text[:limit] + '...'


def _free_name(path: str) -> str:
  """`path`, or `path.2`, `path.3`... if it is taken."""
  candidate, n = path, 1
  while os.path.exists(candidate):
    n += 1
    candidate = f'{path}.{n}'
  return candidate


def _target(abstract: Any, shardings: Any) -> Any:
  """Shapes and dtypes of `abstract`, placed with `shardings`."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      abstract,
      shardings,
  )
