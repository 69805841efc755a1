"""Parallel corpora selectable by `config.data.dataset`.

Every corpus answers the same questions, so the input pipeline never
branches on a dataset name: is the config valid for it (`check`), what are a
split's records (`read`), what names its vocabulary (`vocab_key`), and
whether a record joins several verses with a separator (`verse_separator`).
"""

import dataclasses
from typing import Callable, Protocol

import ml_collections

from attention_jax.data import bible
from attention_jax.data import bible_chapters
from attention_jax.data import parallel_text
from attention_jax.data import verses
from attention_jax.data import wmt14

SPLITS = ('train', 'validation', 'test')
# The fields of one example, (source, target) when well formed; a corrupt
# line of a text file may have another count, which cleaning.py skips.
Record = tuple[str, ...]


class Corpus(Protocol):
  """What every corpus provides."""

  # '' for a corpus of sentences; else the separator (data/verses.py) that
  # joins a record's verses on both sides, kept as one vocabulary piece.
  verse_separator: str

  def check(self, data_config: ml_collections.ConfigDict) -> None:
    """Refuses a config this corpus cannot serve, without reading records.

    Raises:
      ValueError: naming the field to fix.
      FileNotFoundError: a file the config names is missing.
    """

  def read(self, data_config: ml_collections.ConfigDict, split: str,
           data_dir: str) -> list[Record]:
    """A split's records in stored order, each in (source, target) order."""

  def vocab_key(self, data_config: ml_collections.ConfigDict) -> str:
    """A file-name-safe name for the vocabulary of this corpus."""


@dataclasses.dataclass(frozen=True)
class TfdsCorpus:
  """A TFDS dataset of one language pair, read in either direction."""

  name: str
  languages: tuple[str, str]
  # Maps (split, data_dir) to pairs in `languages` order.
  load_pairs: Callable[[str, str], list[tuple[str, str]]]
  verse_separator: str = ''

  def check(self, data_config: ml_collections.ConfigDict) -> None:
    wanted = (data_config.source, data_config.target)
    if sorted(wanted) != sorted(self.languages):
      raise ValueError(
          f'Dataset {self.name!r} pairs {self.languages[0]!r} with '
          f'{self.languages[1]!r}; set config.data.source/target to those, '
          f'got {wanted}.'
      )

  def read(self, data_config: ml_collections.ConfigDict, split: str,
           data_dir: str) -> list[Record]:
    pairs = self.load_pairs(split, data_dir)
    if (data_config.source, data_config.target) == self.languages:
      return pairs
    return [(b, a) for a, b in pairs]

  def vocab_key(self, data_config: ml_collections.ConfigDict) -> str:
    return (f'{self.name.replace("/", "_")}_'
            f'{data_config.source}{data_config.target}')


class ParallelTextCorpus:
  """Files of your own (see parallel_text.py); any pair of languages."""

  verse_separator = ''

  def check(self, data_config: ml_collections.ConfigDict) -> None:
    parallel_text.check(data_config)

  def read(self, data_config: ml_collections.ConfigDict, split: str,
           data_dir: str) -> list[Record]:
    del data_dir  # The files are named by the config.
    return parallel_text.read(data_config, split)

  def vocab_key(self, data_config: ml_collections.ConfigDict) -> str:
    return (f'parallel_text_{data_config.source}{data_config.target}_'
            f'{parallel_text.fingerprint(data_config)}')


_CORPORA: dict[str, Corpus] = {
    'bible_es_en': TfdsCorpus('bible_es_en', ('es', 'en'), bible.load_pairs),
    'bible_chapters_es_en': TfdsCorpus(
        'bible_chapters_es_en', ('es', 'en'), bible_chapters.load_pairs,
        verse_separator=verses.SEPARATOR),
    wmt14.NAME: TfdsCorpus(wmt14.NAME, ('de', 'en'), wmt14.load_pairs),
    'parallel_text': ParallelTextCorpus(),
}


def get(data_config: ml_collections.ConfigDict) -> Corpus:
  """The corpus of `config.data.dataset`, after checking the config for it.

  Raises:
    ValueError: an unknown dataset, naming the valid choices, or a config
      the corpus refuses (see `Corpus.check`).
    FileNotFoundError: a parallel_text file is missing.
  """
  name = data_config.dataset
  if name not in _CORPORA:
    raise ValueError(
        f'Unknown config.data.dataset={name!r}; valid choices are: '
        f'{", ".join(sorted(_CORPORA))}.'
    )
  corpus = _CORPORA[name]
  corpus.check(data_config)
  return corpus


def check_dataset(data_config: ml_collections.ConfigDict) -> None:
  """Refuses an unknown dataset or languages it lacks, before any loading.

  For parallel_text it also checks that every split's files exist.
  """
  get(data_config)


def load_splits(
    data_config: ml_collections.ConfigDict, data_dir: str
) -> dict[str, list[Record]]:
  """The records of every split, in stored order, before cleaning."""
  corpus = get(data_config)
  return {split: corpus.read(data_config, split, data_dir) for split in SPLITS}


def vocab_key(data_config: ml_collections.ConfigDict) -> str:
  """Names the vocabulary file of the configured corpus and languages."""
  return get(data_config).vocab_key(data_config)


def verse_separator(data_config: ml_collections.ConfigDict) -> str:
  """The configured corpus's verse separator; '' for a corpus of sentences."""
  return get(data_config).verse_separator
