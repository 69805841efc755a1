"""Packing of variable-length sentence pairs into fixed-shape batches.

Packed rows hold several sentence pairs end to end; `*_segmentation` numbers
the pairs of a row from 1 (0 is padding) and `*_position` restarts at 0 for
each pair, so attention masks and position encodings keep pairs apart. Fixed
shapes mean one compilation of the training step.
"""

from typing import Sequence

import numpy as np

FIELDS = ('inputs', 'targets')


def pack_rows(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    order: Sequence[int],
    max_len: int,
    open_rows: int = 8,
) -> list[list[int]]:
  """Assigns pairs to rows first-fit among the last `open_rows` rows.

  Args:
    pairs: (source ids, target ids); each side must fit in `max_len`.
    order: the order in which pairs are placed (a shuffle, or sorted).
    max_len: row length, for sources and targets alike.
    open_rows: how many recent rows are still offered space; more rows pack
      tighter at the cost of a longer search.

  Returns:
    Lists of pair indices, one list per row.
  """
  rows: list[list[int]] = []
  used: list[tuple[int, int]] = []
  first_open = 0
  for index in order:
    src_len, tgt_len = len(pairs[index][0]), len(pairs[index][1])
    for row in range(first_open, len(rows)):
      if used[row][0] + src_len <= max_len and used[row][1] + tgt_len <= max_len:
        rows[row].append(index)
        used[row] = (used[row][0] + src_len, used[row][1] + tgt_len)
        break
    else:
      rows.append([index])
      used.append((src_len, tgt_len))
      first_open = max(0, len(rows) - open_rows)
  return rows


def rows_to_batch(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    rows: Sequence[Sequence[int]],
    max_len: int,
) -> dict[str, np.ndarray]:
  """Writes rows of pair indices into packed int32 arrays of [len(rows), L]."""
  batch = {}
  for field in FIELDS:
    for suffix in ('', '_segmentation', '_position'):
      batch[field + suffix] = np.zeros((len(rows), max_len), np.int32)
  for r, row in enumerate(rows):
    offsets = [0, 0]
    for segment, index in enumerate(row, start=1):
      for side, field in enumerate(FIELDS):
        ids = pairs[index][side]
        start, stop = offsets[side], offsets[side] + len(ids)
        batch[field][r, start:stop] = ids
        batch[field + '_segmentation'][r, start:stop] = segment
        batch[field + '_position'][r, start:stop] = np.arange(len(ids))
        offsets[side] = stop
  return batch
