"""Packing and the deterministic, resumable, per-process batch stream."""

import numpy as np
import pytest

from attention_jax.data import batches
from attention_jax.data import packing


def _pairs(n=200, seed=0):
  rng = np.random.default_rng(seed)
  return [
      (rng.integers(3, 50, rng.integers(2, 12)).astype(np.int32),
       rng.integers(3, 50, rng.integers(2, 12)).astype(np.int32))
      for _ in range(n)
  ]


def test_packed_rows_hold_every_pair_once_within_length():
  pairs = _pairs()
  rows = packing.pack_rows(pairs, range(len(pairs)), max_len=24)
  assert sorted(i for row in rows for i in row) == list(range(len(pairs)))
  batch = packing.rows_to_batch(pairs, rows, 24)
  for r, row in enumerate(rows):
    for segment, index in enumerate(row, start=1):
      for field, ids in zip(packing.FIELDS, pairs[index]):
        where = batch[field + '_segmentation'][r] == segment
        np.testing.assert_array_equal(batch[field][r][where], ids)
        np.testing.assert_array_equal(
            batch[field + '_position'][r][where], np.arange(len(ids))
        )
  # Padding is zero everywhere it appears.
  pad = batch['targets_segmentation'] == 0
  assert not batch['targets'][pad].any()


def test_stream_resumes_from_its_state():
  pairs = _pairs()
  stream = batches.PackedTrainStream(pairs, 4, 24, seed=3)
  for _ in range(stream.batches_per_epoch + 2):  # Crosses an epoch boundary.
    next(stream)
  state = stream.state()
  expected = [next(stream) for _ in range(3)]
  resumed = batches.PackedTrainStream(pairs, 4, 24, seed=3)
  resumed.restore(state)
  for want, got in zip(expected, [next(resumed) for _ in range(3)]):
    for name in want:
      np.testing.assert_array_equal(want[name], got[name])


def test_processes_read_disjoint_rows_of_the_same_global_batch():
  pairs = _pairs()
  whole = next(batches.PackedTrainStream(pairs, 4, 24, seed=1))
  shards = [
      next(batches.PackedTrainStream(pairs, 4, 24, seed=1, rows=rows))
      for rows in (slice(0, 2), slice(2, 4))
  ]
  for name in whole:
    np.testing.assert_array_equal(
        np.concatenate([s[name] for s in shards]), whole[name]
    )


def test_restore_refuses_another_seed():
  stream = batches.PackedTrainStream(_pairs(), 4, 24, seed=1)
  with pytest.raises(ValueError, match='config.seed'):
    stream.restore({'epoch': 0, 'index': 1, 'seed': 2})


def test_source_batches_cover_all_sentences_in_padded_groups():
  sources = [p[0] for p in _pairs(37)]
  seen = []
  for indices, tokens in batches.source_batches(sources, 8, max_len=64):
    assert tokens.shape[0] == 8 and tokens.shape[1] % 16 == 0
    for row, index in enumerate(indices):
      np.testing.assert_array_equal(tokens[row, : len(sources[index])],
                                    sources[index])
    seen.extend(indices)
  assert sorted(seen) == list(range(37))
