"""Each test sequence's answers, as a point of a diagnostic study leaves them.

A diagnostic task (train/diagnostic_task.py) writes `answers/test.csv` in its
workdir: per test sequence, in the test set's fixed order (the same for
every seed and mechanism of a data config), its setting ('length=L,items=D'),
the answers it got right and the answers it was asked. The study report
(ablation/report.py) reads them to compare mechanisms by a paired bootstrap
over test sequences. NumPy only, so the report imports no JAX.
"""

import csv
import io

import numpy as np


COLUMNS = ('setting', 'correct', 'answers')


def to_csv(sequences: np.ndarray, setting_names: list[str]) -> str:
  """[N, 3] (setting index, correct, answers) rows as answers/test.csv."""
  text = io.StringIO(newline='')
  writer = csv.writer(text)
  writer.writerow(COLUMNS)
  writer.writerows((setting_names[s], c, a) for s, c, a in sequences)
  return text.getvalue()


def read(path: str) -> tuple[list[str], np.ndarray]:
  """answers/test.csv: each sequence's setting name, and [N, 2] int
  (correct answers, answers).

  Raises:
    ValueError: the file's columns are not COLUMNS.
  """
  with open(path, newline='') as f:
    rows = list(csv.reader(f))
  if not rows or tuple(rows[0]) != COLUMNS:
    raise ValueError(f'{path}: expected the columns {COLUMNS}, found '
                     f'{rows[0] if rows else "an empty file"}.')
  return ([r[0] for r in rows[1:]],
          np.array([[int(r[1]), int(r[2])] for r in rows[1:]],
                   np.int64).reshape(-1, 2))
