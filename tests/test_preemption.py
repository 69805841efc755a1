"""The SIGTERM watcher of single-process runs, in this process."""

import os
import signal

from attention_jax.train import preemption


def test_sigterm_asks_to_stop_and_the_old_handler_comes_back():
  before = signal.getsignal(signal.SIGTERM)
  for _ in range(2):  # As repeated in-process training runs do.
    with preemption.PreemptionWatcher() as watcher:
      assert not watcher.should_stop(1)
      os.kill(os.getpid(), signal.SIGTERM)
      assert watcher.should_stop(2)
    assert signal.getsignal(signal.SIGTERM) is before
