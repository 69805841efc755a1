"""A jax.profiler trace of a few training steps, for TensorBoard's profiler.

Each process traces its own host and devices into `workdir/profile/
process_<i>/plugins/profile/<time>/<host>.xplane.pb`, so processes sharing a
host and a workdir never write the same file. `tensorboard --logdir
workdir/profile` (with `pip install tensorboard-plugin-profile`) shows one
run per process.
"""

import collections
import glob
import os

from absl import logging
import jax


class StepTracer:
  """Traces `num_steps` training steps, from the second this process runs.

  The first step of a process is left out: it allocates buffers and warms
  caches that no later step pays for. Used as a context manager, the trace
  is stopped however training ends (its last step, preemption, an error).
  """

  def __init__(self, workdir: str, num_steps: int, first_step: int):
    """Prepares a trace of steps first_step + 2 .. first_step + num_steps + 1.

    Args:
      workdir: the run directory; the trace goes under its `profile/`.
      num_steps: how many steps to trace; 0 traces nothing.
      first_step: the training step this process starts from (0, or the
        step of the checkpoint it resumed).
    """
    self.log_dir = os.path.join(
        workdir, 'profile', f'process_{jax.process_index()}')
    # Steps are numbered as in the logs: the step that makes state.step n.
    self._start = first_step + 2
    self._stop = first_step + num_steps + 1
    self._enabled = num_steps > 0
    self._tracing = False
    self._last_traced = None

  def __enter__(self) -> 'StepTracer':
    return self

  def __exit__(self, *exc_info) -> None:
    if self._tracing:
      self._finish()

  def step(self, step: int):
    """Call around the dispatch of `step`; an annotation for the trace view."""
    if self._enabled and step == self._start:
      os.makedirs(self.log_dir, exist_ok=True)
      jax.profiler.start_trace(self.log_dir)
      self._tracing = True
    if self._tracing:
      self._last_traced = step
    return jax.profiler.StepTraceAnnotation('train', step_num=step)

  def done(self, step: int, outputs) -> None:
    """After `step` is dispatched: ends the trace once its last step ran."""
    if self._tracing and step == self._stop:
      # The steps run asynchronously: wait, so the trace holds all of them.
      jax.block_until_ready(outputs)
      self._finish()

  def _finish(self) -> None:
    self._tracing = False
    jax.profiler.stop_trace()
    logging.info('Profile of training steps %d-%d written to %s.',
                 self._start, self._last_traced, self.log_dir)


def xla_op_seconds(log_dir: str,
                   module_prefix: str = 'jit_') -> dict[str, float]:
  """Seconds each XLA operation ran in the newest trace under `log_dir`.

  Sums the events that XLA's runtime labels with an `hlo_op` (on the CPU
  one per thunk: a YNNPACK/XNNPACK matmul fusion, a loop fusion, a copy),
  over every thread that ran them, for HLO modules whose name starts with
  `module_prefix`. Operations that ran concurrently on several threads
  count once per thread, so the total can exceed the wall time.

  Args:
    log_dir: the directory `jax.profiler.trace` wrote.
    module_prefix: which jitted programs count (`jit_train_step` for the
      training step).

  Returns:
    {HLO operation name: seconds}, largest first.

  Raises:
    FileNotFoundError: no `.xplane.pb` under `log_dir`.
  """
  traces = sorted(glob.glob(os.path.join(log_dir, '**', '*.xplane.pb'),
                            recursive=True), key=os.path.getmtime)
  if not traces:
    raise FileNotFoundError(f'No jax.profiler trace (*.xplane.pb) under '
                            f'{log_dir}.')
  seconds = collections.Counter()
  profile = jax.profiler.ProfileData.from_file(traces[-1])
  for plane in profile.planes:
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        if str(stats.get('hlo_module', '')).startswith(module_prefix) and (
            'hlo_op' in stats):
          seconds[str(stats['hlo_op'])] += event.duration_ns / 1e9
  return dict(seconds.most_common())
