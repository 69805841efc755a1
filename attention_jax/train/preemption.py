"""Noticing preemption, so training can checkpoint and stop at a clean step.

Cloud TPU VMs (and most schedulers) announce preemption with SIGTERM and kill
the process some seconds later. The training loop asks once per step whether
the notice came; if so it saves a checkpoint at that step and returns, and
rerunning the same command continues from there. In a single-process run,
SIGTERM outside the loop (setup, final evaluation) keeps its default effect:
nothing is lost there that the last checkpoint does not hold.

Every process of a multi-process run must stop at the same step. When the
JAX distributed runtime is up, its preemption sync manager already handles
SIGTERM: a native handler (installed by `jax.distributed.initialize`) tells
the coordination service, which picks one step at which
`multihost_utils.reached_preemption_sync_point` turns True on all processes.
A Python handler for SIGTERM would replace that native one, and the notice
would never reach the other processes, so such runs install none. Python's
`signal.getsignal` cannot see the native handler either (it still reports
SIG_DFL), so saving and restoring "the previous handler" from Python would
break it just the same. (As of jax 0.10.2, CPU included: the native handler
sets a flag that a listener thread polls once a second, so the processes stop
a second or so of steps after the signal.) Runs without the distributed
runtime use a Python handler that only sets a flag.

Ctrl-C (SIGINT, which a terminal sends to its whole process group, a study
and its running point alike) stops training the same way: a checkpoint at
the current step, then a clean exit. A multi-process run turns it into a
SIGTERM to its own process, so that the preemption sync manager stops every
process at one step. A second Ctrl-C raises KeyboardInterrupt at once, as
usual, losing the work since the last checkpoint.
"""

import os
import signal
import types

from absl import logging
import jax
from jax.experimental import multihost_utils


class PreemptionWatcher:
  """Context manager that says, once per step, whether to stop for a signal.

  SIGTERM and SIGINT both ask to stop. Leaving the context puts back the
  handlers found on entering, so repeated in-process runs each start from
  the process's own handlers. It must be entered on the main thread, where
  Python runs signal handlers.
  """

  def __init__(self):
    self._synced = jax.distributed.is_initialized()
    # The signal that asked to stop, as the stop message names it.
    self.reason = None
    self._previous_handlers = {}

  def __enter__(self) -> 'PreemptionWatcher':
    if not self._synced:
      self._previous_handlers[signal.SIGTERM] = signal.signal(
          signal.SIGTERM, self._on_sigterm
      )
    self._previous_handlers[signal.SIGINT] = signal.signal(
        signal.SIGINT, self._on_sigint
    )
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous_handlers.items():
      signal.signal(signum, handler)

  def _on_sigterm(self, signum: int, frame: types.FrameType | None) -> None:
    del signum, frame
    self.reason = self.reason or 'Preempted (SIGTERM)'

  def _on_sigint(self, signum: int, frame: types.FrameType | None) -> None:
    del signum, frame
    if self.reason == 'Interrupted (SIGINT)':
      raise KeyboardInterrupt
    self.reason = 'Interrupted (SIGINT)'
    logging.warning(
        'Ctrl-C: saving a checkpoint after this step, then stopping. Ctrl-C '
        'again stops at once, losing the steps since the last checkpoint.'
    )
    if self._synced:
      os.kill(os.getpid(), signal.SIGTERM)

  def should_stop(self, step: int) -> bool:
    """Whether to checkpoint `step` and stop; call it after every step.

    In a multi-process run every process must call it with the same steps.
    """
    if self._synced:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.reason is not None
