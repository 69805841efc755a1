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
"""

import signal
import types

import jax
from jax.experimental import multihost_utils


class PreemptionWatcher:
  """Context manager that says, once per step, whether to stop for SIGTERM.

  Leaving the context puts back the SIGTERM handler found on entering, so
  repeated in-process runs each start from the process's own handler. It
  must be entered on the main thread, where Python runs signal handlers.
  """

  def __init__(self):
    self._synced = jax.distributed.is_initialized()
    self._notified = False
    self._previous_handler = None

  def __enter__(self) -> 'PreemptionWatcher':
    if not self._synced:
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc_info) -> None:
    if not self._synced:
      signal.signal(signal.SIGTERM, self._previous_handler)

  def _on_sigterm(self, signum: int, frame: types.FrameType | None) -> None:
    del signum, frame
    self._notified = True

  def should_stop(self, step: int) -> bool:
    """Whether to checkpoint `step` and stop; call it after every step.

    In a multi-process run every process must call it with the same steps.
    """
    if self._synced:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._notified
