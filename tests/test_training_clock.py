"""The clock of training seconds (wall and CPU), with the time faked."""

import pytest

from attention_jax.train import training_clock


@pytest.fixture
def fake_time(monkeypatch):
  now = {'wall': 100.0, 'cpu': 50.0}
  monkeypatch.setattr(training_clock.time, 'perf_counter',
                      lambda: now['wall'])
  monkeypatch.setattr(training_clock.time, 'process_time',
                      lambda: now['cpu'])
  return now


def _advance(now, wall, cpu):
  now['wall'] += wall
  now['cpu'] += cpu


def test_laps_add_up_from_the_resumed_totals(fake_time):
  clock = training_clock.TrainingClock(wall=10.0, cpu=15.0)
  _advance(fake_time, 4.0, 7.0)
  assert clock.now() == (14.0, 22.0)
  assert (clock.wall, clock.cpu) == (10.0, 15.0)  # Not closed yet.
  assert clock.lap() == 4.0
  assert (clock.wall, clock.cpu) == (14.0, 22.0)
  _advance(fake_time, 1.0, 2.0)
  assert clock.lap() == 1.0
  assert (clock.wall, clock.cpu) == (15.0, 24.0)


def test_paused_time_counts_on_neither_clock(fake_time):
  clock = training_clock.TrainingClock()
  _advance(fake_time, 2.0, 3.0)
  with clock.paused():
    _advance(fake_time, 30.0, 60.0)  # An evaluation.
  _advance(fake_time, 1.0, 1.0)
  assert clock.now() == (3.0, 4.0)
  assert clock.lap() == 3.0


def test_unknown_cpu_time_stays_unknown(fake_time):
  # Resumed from a checkpoint written before CPU time was counted.
  clock = training_clock.TrainingClock(wall=5.0, cpu=None)
  _advance(fake_time, 1.0, 1.0)
  assert clock.now() == (6.0, None)
  clock.lap()
  assert (clock.wall, clock.cpu) == (6.0, None)
