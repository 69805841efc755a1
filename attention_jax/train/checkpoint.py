"""Orbax checkpoints of the training state and the data stream position.

Orbax writes each step into a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint intact;
the unfinished directory is never listed as a step.
"""

import glob
import os
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp


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
    """
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
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

  def save(self, step: int, state: Any, data_state: dict[str, int]) -> None:
    """Starts an asynchronous save; `wait()` blocks until it is on disk."""
    self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
        ),
        force=True,
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
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))


def _target(abstract: Any, shardings: Any) -> Any:
  """Shapes and dtypes of `abstract`, placed with `shardings`."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      abstract,
      shardings,
  )
