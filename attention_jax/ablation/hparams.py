"""A finished study point as one session of TensorBoard's HPARAMS tab.

  tensorboard --logdir STUDY/points

then shows one sortable row per finished point: its variant, seed and
overrides beside its final scores. Each point directory holds one events
file with the hparams plugin's session start (the hyper-parameters), the
final metrics as scalars at the point's last step, and the session end.

No experiment summary is written, unlike tensorboardX's `add_hparams`: the
plugin takes the columns of the first experiment summary it finds, so one
per point would hide the overrides and metrics of the others; without one
it gathers the columns from every session. The trainer's curves, in the
point's tensorboard/ subdirectory, belong to the same session and appear as
metrics of group 'tensorboard' (their last values).
"""

import glob
import os
from typing import Any

import tensorboardX
from tensorboardX import summary

from attention_jax.ablation import study as study_lib

_EVENT_FILES = 'events.out.tfevents.*'

HParamValue = bool | int | float | str


def hparams_of(point: study_lib.Point) -> dict[str, HParamValue]:
  """The point's variant, seed and config overrides (dotted field names).

  TensorBoard takes only bool, number and string values; any other override
  (a tuple, None) is shown as its Python text.
  """
  values = {'variant': point.variant, 'seed': point.seed, **point.overrides}
  return {
      name: value if isinstance(value, HParamValue) else str(value)
      for name, value in values.items()
  }


def metrics_of(results: dict[str, Any], wall_seconds: float
               ) -> dict[str, float]:
  """Every number in results.json (scores, losses, speeds), and wall time.

  Args:
    results: the point's results.json; its config, signatures and other
      text are left out.
    wall_seconds: the point's attempts' wall time together, as
      'wall_seconds'.
  """
  metrics = {
      name: float(value) for name, value in results.items()
      if isinstance(value, int | float) and not isinstance(value, bool)
  }
  metrics['wall_seconds'] = float(wall_seconds)
  return metrics


def write(path: str, point: study_lib.Point, results: dict[str, Any],
          wall_seconds: float) -> None:
  """Writes the point's session into its directory `path`, replacing any.

  Args:
    path: the point's workdir.
    point: the study point trained there.
    results: its results.json.
    wall_seconds: its attempts' wall time together.
  """
  # One session per point: an earlier one (the point since retrained, or
  # the study rerun) would be a second start in the same run.
  for old in glob.glob(os.path.join(path, _EVENT_FILES)):
    os.remove(old)
  metrics = metrics_of(results, wall_seconds)
  _, session_start, session_end = summary.hparams(hparams_of(point), metrics)
  step = int(results.get('steps', 0))
  writer = tensorboardX.FileWriter(path)
  try:
    writer.add_summary(session_start, step)
    for name, value in metrics.items():
      writer.add_summary(summary.scalar(name, value), step)
    writer.add_summary(session_end, step)
  finally:
    writer.close()
