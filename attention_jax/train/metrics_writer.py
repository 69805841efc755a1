"""Scalars to TensorBoard event files and a JSONL file, from process 0 only."""

import os

import tensorboardX

from attention_jax import run_records


class MetricsWriter:
  """Writes `{name: value}` scalars by step; a no-op on other processes."""

  def __init__(self, workdir: str, enabled: bool):
    self._enabled = enabled
    if enabled:
      self._path = os.path.join(workdir, 'metrics.jsonl')
      self._summary = tensorboardX.SummaryWriter(
          os.path.join(workdir, 'tensorboard')
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
