"""The SIGTERM and SIGINT watcher of single-process runs, in this process."""

import os
import signal

import pytest

from attention_jax.train import preemption


def test_sigterm_asks_to_stop_and_the_old_handler_comes_back():
  before = signal.getsignal(signal.SIGTERM)
  for _ in range(2):  # As repeated in-process training runs do.
    with preemption.PreemptionWatcher() as watcher:
      assert not watcher.should_stop(1)
      os.kill(os.getpid(), signal.SIGTERM)
      assert watcher.should_stop(2)
    assert signal.getsignal(signal.SIGTERM) is before


def test_ctrl_c_asks_to_stop_and_a_second_one_stops_at_once():
  before = signal.getsignal(signal.SIGINT)
  with preemption.PreemptionWatcher() as watcher:
    os.kill(os.getpid(), signal.SIGINT)
    assert watcher.should_stop(1)
    assert watcher.reason == 'Interrupted (SIGINT)'
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is before


def test_sigterm_after_ctrl_c_does_not_stop_at_once():
  with preemption.PreemptionWatcher() as watcher:
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
    assert watcher.should_stop(1)
    assert watcher.reason == 'Interrupted (SIGINT)'
