"""The figure a study compares its points by, chosen from what they report.

Translation points report corpus BLEU over test sentences; the diagnostic
tasks (attention_jax/diagnostics) report answer accuracy over test
sequences and have no BLEU. The report (ablation/report.py) and the
runner's log line (ablation/runner.py) take the figure from here, and the
paired bootstrap (ablation/significance.py) resamples the matching
per-sentence or per-sequence statistics.
"""

import dataclasses
from typing import Callable

import numpy as np

from attention_jax.ablation import significance


@dataclasses.dataclass(frozen=True)
class Headline:
  """One figure: its results.json key, its name, how it is printed, and the
  score of summed per-item statistics `[..., stats]` that it is."""
  key: str
  label: str
  digits: int
  # 'sentences' or 'sequences': what the test set's items are.
  items: str
  score: Callable[[np.ndarray], np.ndarray]
  # The columns of results.csv and summary.csv that only this figure's task
  # fills; a study of the other task leaves them out.
  columns: tuple[str, ...] = ()

  def format(self, value: float) -> str:
    return f'{self.label} {value:.{self.digits}f}'


BLEU = Headline(
    'test_bleu', 'test BLEU', 2, 'sentences', significance.bleu_from_stats,
    columns=('test_bleu', 'test_chrf', 'test_bleu_signature',
             'test_chrf_signature', 'test_decode_tokens_per_sec',
             'test_bleu_mean', 'test_bleu_std', 'test_chrf_mean',
             'test_chrf_std', 'bleu_signature', 'chrf_signature',
             'decode_tokens_per_sec'))
ACCURACY = Headline(
    'test_accuracy', 'test answer accuracy', 3, 'sequences',
    significance.accuracy_from_stats,
    columns=('test_accuracy', 'test_sequence_accuracy', 'test_accuracy_mean',
             'test_accuracy_std', 'test_sequence_accuracy_mean'))


def other_task_columns(figure: Headline) -> tuple[str, ...]:
  """The CSV columns a study compared by `figure` has no values for."""
  return (ACCURACY if figure is BLEU else BLEU).columns


def of_results(results: dict) -> Headline | None:
  """The figure a point's results.json has: BLEU, else answer accuracy;
  None for neither."""
  return next((h for h in (BLEU, ACCURACY) if h.key in results), None)


def of_study(results: list[dict]) -> Headline:
  """The figure of a study whose finished points reported `results`: answer
  accuracy where every one that reports a figure has it instead of BLEU;
  BLEU otherwise (also where nothing has finished yet).

  Raises:
    ValueError: some points report BLEU and others only answer accuracy
      (translation and diagnostic points in one study).
  """
  kinds = {of_results(r) for r in results} - {None}
  if len(kinds) > 1:
    raise ValueError(
        'The study\'s finished points report different figures (test BLEU '
        'and test answer accuracy): a study compares points of one task. '
        'Split the sweep into one study per task.')
  return kinds.pop() if kinds else BLEU
