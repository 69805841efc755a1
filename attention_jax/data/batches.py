"""Deterministic batch streams over tokenised sentence pairs.

Every process builds the same global batch order from the seed and keeps only
its own rows, so a multi-host run reads disjoint shards of each global batch
and a restarted run reproduces the stream from a small JSON state.
"""

from typing import Iterator, Sequence

import numpy as np

from attention_jax.data import packing

Pair = tuple[np.ndarray, np.ndarray]


class PackedTrainStream:
  """Endless shuffled stream of packed batches, resumable from `state()`."""

  def __init__(
      self,
      pairs: Sequence[Pair],
      batch_size: int,
      max_len: int,
      seed: int,
      rows: slice = slice(None),
  ):
    """Args:
      pairs: tokenised (source, target) pairs.
      batch_size: packed rows per global batch.
      max_len: tokens per packed row.
      seed: fixes the order of every epoch.
      rows: the rows of each global batch this process feeds (see
        `attention_jax.sharding.process_rows`).
    """
    self._pairs = pairs
    self._batch_size = batch_size
    self._max_len = max_len
    self._seed = seed
    self._rows = rows
    self._epoch = 0
    self._index = 0
    self._epoch_rows = self._pack_epoch(0)

  def _pack_epoch(self, epoch: int) -> list[list[int]]:
    order = np.random.default_rng([self._seed, epoch]).permutation(
        len(self._pairs)
    )
    rows = packing.pack_rows(self._pairs, order, self._max_len)
    if len(rows) < self._batch_size:
      raise ValueError(
          f'One epoch packs into {len(rows)} rows, fewer than batch_size='
          f'{self._batch_size}; lower the batch size.'
      )
    return rows

  @property
  def batches_per_epoch(self) -> int:
    return len(self._epoch_rows) // self._batch_size

  def state(self) -> dict[str, int]:
    """Position in the stream, as JSON-serialisable integers."""
    return {'epoch': self._epoch, 'index': self._index, 'seed': self._seed}

  def restore(self, state: dict[str, int]) -> None:
    if state['seed'] != self._seed:
      raise ValueError(
          f'Checkpointed data stream used seed {state["seed"]}, the config '
          f'says {self._seed}; resume with the same config.seed.'
      )
    self._epoch, self._index = state['epoch'], state['index']
    self._epoch_rows = self._pack_epoch(self._epoch)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._index >= self.batches_per_epoch:
      self._epoch += 1
      self._index = 0
      self._epoch_rows = self._pack_epoch(self._epoch)
    start = self._index * self._batch_size
    global_rows = self._epoch_rows[start : start + self._batch_size]
    self._index += 1
    return packing.rows_to_batch(
        self._pairs, global_rows[self._rows], self._max_len
    )


def packed_eval_batches(
    pairs: Sequence[Pair],
    batch_size: int,
    max_len: int,
    rows: slice = slice(None),
) -> list[dict[str, np.ndarray]]:
  """Every pair once, packed in length order; the last batch padded.

  Each batch keeps only `rows`, this process's part of the global batch.
  """
  order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))
  packed = packing.pack_rows(pairs, order, max_len)
  packed += [[] for _ in range(-len(packed) % batch_size)]
  return [
      packing.rows_to_batch(pairs, packed[i : i + batch_size][rows], max_len)
      for i in range(0, len(packed), batch_size)
  ]


def source_batches(
    sources: Sequence[np.ndarray],
    batch_size: int,
    max_len: int,
    length_multiple: int = 16,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Padded global source batches for decoding, grouped by length.

  Widths are rounded up to `length_multiple` so that only a few shapes are
  compiled. Sources longer than `max_len` are truncated (keeping EOS last).

  Yields:
    (indices of the real rows in `sources`, int32 tokens [batch_size, W]);
    rows past the real ones are all padding.
  """
  order = np.argsort([len(s) for s in sources], kind='stable')
  for start in range(0, len(order), batch_size):
    indices = order[start : start + batch_size]
    chunk = [_truncate(sources[i], max_len) for i in indices]
    width = -(-max(len(s) for s in chunk) // length_multiple) * length_multiple
    tokens = np.zeros((batch_size, min(width, max_len)), np.int32)
    for row, ids in enumerate(chunk):
      tokens[row, : len(ids)] = ids
    yield indices, tokens


def _truncate(ids: np.ndarray, max_len: int) -> np.ndarray:
  if len(ids) <= max_len:
    return ids
  return np.concatenate([ids[: max_len - 1], ids[-1:]])
