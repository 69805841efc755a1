"""The diagnostic tasks by name, their settings grid, and their batches.

A task is trained on a mixture of settings (sequence length L, item count
D) and evaluated at each. Each row of a batch is one example of one setting,
padded with 0 to the longest length, so every batch has one shape. A batch
is a dict of numpy arrays: 'inputs' [B, L] int32, 'targets' [B, L] int32,
'weights' [B, L] float32 (1 at answer positions) and 'setting' [B] int32
(the index into `settings`).

Training batch i of seed s is drawn from numpy's Generator seeded with
(s, i): the seed and the step alone determine it, so a resumed run reads on
exactly where it stopped. Evaluation sets are drawn from seeds that do not
depend on config.seed, so every point of a study is scored on the same
sequences.
"""

import dataclasses
import itertools
from typing import Callable, Iterator, Sequence

import ml_collections
import numpy as np

from attention_jax.diagnostics import recall
from attention_jax.diagnostics import selective_copy

Generator = Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]
# Seeds of the evaluation sets, far from any config.seed a study uses.
_SPLIT_SEEDS = {'valid': 1_000_001, 'test': 1_000_002}


@dataclasses.dataclass(frozen=True)
class Task:
  """A diagnostic task: its generator and what its item count counts."""
  name: str
  generate: Generator
  # Results report accuracy_by_<item> ('pairs' or 'tokens').
  item: str
  # What a setting's `items=` counts, in words for reports.
  items_are: str


TASKS = {
    'mqar': Task('mqar', recall.mqar, 'pairs', 'key-value pairs'),
    'noisy_recall': Task('noisy_recall', recall.noisy_recall, 'pairs',
                         'key-value pairs'),
    'selective_copy': Task('selective_copy', selective_copy.generate,
                           'tokens', 'tokens to copy'),
}


def get(name: str) -> Task:
  """The task called `name`.

  Raises:
    ValueError: for an unknown name, naming the valid ones.
  """
  if name not in TASKS:
    raise ValueError(
        f'Unknown task {name!r}; valid choices are: translation, '
        f'{", ".join(TASKS)}.')
  return TASKS[name]


@dataclasses.dataclass(frozen=True)
class Setting:
  length: int
  num_items: int

  @property
  def name(self) -> str:
    return f'length={self.length},items={self.num_items}'


def settings(data: ml_collections.ConfigDict) -> list[Setting]:
  """Every (length, item count) of `config.data` that fits its length.

  Raises:
    ValueError: when no pair fits, or a length exceeds data.max_len.
  """
  if max(data.lengths) > data.max_len:
    raise ValueError(
        f'config.data.lengths={tuple(data.lengths)} exceed config.data.'
        f'max_len={data.max_len}, the longest sequence the model covers.')
  grid = [Setting(length, items) for length, items in
          itertools.product(data.lengths, data.num_items)
          if 2 * items + _queries(data, items) <= length]
  if not grid:
    raise ValueError(
        f'No setting of config.data.num_items={tuple(data.num_items)} fits '
        f'config.data.lengths={tuple(data.lengths)}.')
  return grid


def _queries(data: ml_collections.ConfigDict, num_items: int) -> int:
  """Queries per example: data.num_queries, or every item where it is 0."""
  return min(data.num_queries, num_items) if data.num_queries else num_items


def _example(task: Task, data, setting: Setting, rng: np.random.Generator):
  return task.generate(rng, data.vocab_size, setting.length,
                       setting.num_items, _queries(data, setting.num_items))


def make_batch(task: Task, data: ml_collections.ConfigDict,
               grid: Sequence[Setting], chosen: Sequence[int],
               rng: np.random.Generator) -> dict[str, np.ndarray]:
  """One example of setting `grid[i]` per i in `chosen`, padded to max_len."""
  batch = {
      'inputs': np.zeros((len(chosen), data.max_len), np.int32),
      'targets': np.zeros((len(chosen), data.max_len), np.int32),
      'weights': np.zeros((len(chosen), data.max_len), np.float32),
      'setting': np.asarray(chosen, np.int32),
  }
  for row, index in enumerate(chosen):
    arrays = _example(task, data, grid[index], rng)
    for key, array in zip(('inputs', 'targets', 'weights'), arrays):
      batch[key][row, :len(array)] = array
  return batch


class TrainStream:
  """Endless training batches; batch i depends only on (seed, i)."""

  def __init__(self, task: Task, data: ml_collections.ConfigDict,
               batch_size: int, seed: int, rows: slice = slice(None)):
    """Args:
      task: the task to draw from.
      data: config.data (vocab_size, lengths, num_items, num_queries,
        max_len).
      batch_size: rows of each global batch.
      seed: config.seed.
      rows: the rows of each global batch this process feeds.
    """
    self._task, self._data = task, data
    self._grid = settings(data)
    self._batch_size, self._seed, self._rows = batch_size, seed, rows
    self._index = 0

  def state(self) -> dict[str, int]:
    """Position in the stream, as JSON-serialisable integers."""
    return {'index': self._index, 'seed': self._seed}

  def restore(self, state: dict[str, int]) -> None:
    if state['seed'] != self._seed:
      raise ValueError(
          f'Checkpointed data stream used seed {state["seed"]}, the config '
          f'says {self._seed}; resume with the same config.seed.')
    self._index = state['index']

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self._seed, self._index])
    self._index += 1
    chosen = rng.integers(len(self._grid), size=self._batch_size)
    batch = make_batch(self._task, self._data, self._grid, chosen, rng)
    return {k: v[self._rows] for k, v in batch.items()}


def eval_batches(task: Task, data: ml_collections.ConfigDict, split: str,
                 examples: int, batch_size: int,
                 rows: slice = slice(None)) -> list[dict[str, np.ndarray]]:
  """`examples` sequences of every setting of `split` ('valid', 'test').

  The last batch is filled up with rows of weight 0, so every batch has
  `batch_size` rows.
  """
  grid = settings(data)
  rng = np.random.default_rng(_SPLIT_SEEDS[split])
  chosen = np.repeat(np.arange(len(grid)), examples)
  chosen = np.pad(chosen, (0, -len(chosen) % batch_size))
  batches = []
  for start in range(0, len(chosen), batch_size):
    batch = make_batch(task, data, grid, chosen[start:start + batch_size], rng)
    filler = np.arange(start, start + batch_size) >= len(grid) * examples
    batch['weights'][filler] = 0.0
    batches.append({k: v[rows] for k, v in batch.items()})
  return batches
