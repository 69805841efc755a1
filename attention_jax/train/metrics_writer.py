"""Scalars to TensorBoard event files and a JSONL file, from process 0 only."""

import os

import tensorboardX

from attention_jax import run_records


class MetricsWriter:
  """Writes `{name: value}` scalars by step; a no-op on other processes."""

  def __init__(self, workdir: str, enabled: bool, start_step: int = 0):
    """Opens the workdir's metrics, forgetting those logged after `start_step`.

    Args:
      workdir: the run directory.
      enabled: whether this process writes (process 0).
      start_step: the step training resumes from (0 for a fresh start). A run
        that went further before it was killed logged steps it will now
        replay; they are removed from metrics.jsonl and hidden in
        TensorBoard (tensorboardX's purge_step), so each step counts once.
    """
    self._enabled = enabled
    if enabled:
      self._path = os.path.join(workdir, 'metrics.jsonl')
      run_records.keep_jsonl(self._path,
                             lambda r: r.get('step', 0) <= start_step)
      self._summary = tensorboardX.SummaryWriter(
          os.path.join(workdir, 'tensorboard'), purge_step=start_step + 1
      )

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self._enabled:
      return
    for name, value in scalars.items():
      self._summary.add_scalar(name, value, step)
    run_records.append_jsonl(self._path, {'step': step, **scalars})
    self._summary.flush()

  def close(self) -> None:
    if self._enabled:
      self._summary.close()
