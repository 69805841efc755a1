"""Scalars to TensorBoard event files and a JSONL file, from process 0 only."""

import json
import os

import tensorboardX


class MetricsWriter:
  """Writes `{name: value}` scalars by step; a no-op on other processes."""

  def __init__(self, workdir: str, enabled: bool):
    self._enabled = enabled
    if enabled:
      self._summary = tensorboardX.SummaryWriter(
          os.path.join(workdir, 'tensorboard')
      )
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self._enabled:
      return
    for name, value in scalars.items():
      self._summary.add_scalar(name, value, step)
    self._jsonl.write(json.dumps({'step': step, **scalars}) + '\n')
    self._jsonl.flush()
    self._summary.flush()

  def close(self) -> None:
    if self._enabled:
      self._summary.close()
      self._jsonl.close()
