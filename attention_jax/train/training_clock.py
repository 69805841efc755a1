"""The seconds a run spends in training steps, on two clocks.

Wall-clock seconds are what an equal-time study budgets; this process's CPU
seconds (every thread) over the same intervals say how much of the machine
the run had: their ratio falls when other work shares the CPU
(ablation/report_text.cpu_share_text). Both carry across restarts through
the checkpoint, and time spent evaluating is not training time.
"""

import contextlib
import time


class TrainingClock:
  """Training seconds so far, in intervals closed by `lap`.

  Attributes:
    wall: wall-clock seconds of the closed intervals (and of earlier runs).
    cpu: process CPU seconds of the same intervals, or None when unknown
      (resumed from a checkpoint written before CPU time was counted).
  """

  def __init__(self, wall: float = 0.0, cpu: float | None = 0.0):
    self.wall, self.cpu = wall, cpu
    self._wall_start = time.perf_counter()
    self._cpu_start = time.process_time()

  def now(self) -> tuple[float, float | None]:
    """(wall, cpu) seconds up to now: the closed intervals and the one under
    way."""
    wall = self.wall + time.perf_counter() - self._wall_start
    if self.cpu is None:
      return wall, None
    return wall, self.cpu + time.process_time() - self._cpu_start

  def lap(self) -> float:
    """Closes the interval under way and starts the next; returns the closed
    interval's wall-clock seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    elapsed = wall - self._wall_start
    self.wall += elapsed
    if self.cpu is not None:
      self.cpu += cpu - self._cpu_start
    self._wall_start, self._cpu_start = wall, cpu
    return elapsed

  @contextlib.contextmanager
  def paused(self):
    """Time spent inside (an evaluation, say) counts on neither clock."""
    wall, cpu = time.perf_counter(), time.process_time()
    try:
      yield
    finally:
      self._wall_start += time.perf_counter() - wall
      self._cpu_start += time.process_time() - cpu
