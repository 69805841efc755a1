"""`bible_chapters_es_en`: Spanish-English Bible chapters, for long contexts.

The verse pairs of `bible_es_en` (bible.py: same modules, same pairing, same
length filter, same whole-book splits and the same removal of training verses
whose text also occurs in a held-out book), grouped by chapter: one example
per chapter and split, its kept verses in module order joined by
`verses.SEPARATOR` on both sides. A verse missing from either module, or
dropped by the length filter or the leak removal, is missing from both sides
of its chapter, so the two sides always hold the same verses and a test
chapter's verses are exactly the `bible_es_en` test verses of that chapter.
Every verse of `bible_es_en` is in exactly one chapter example.

Features: `es`, `en` (the joined verses), `ref` ('Acts 1') and `verses`
(the chapter's kept verse numbers, space-separated: '1 2 4').

    chapters = load_chapters('test', data_dir='/tmp/tfds')
"""

import itertools
import pathlib
from typing import NamedTuple

import tensorflow_datasets as tfds

from attention_jax.data import bible
from attention_jax.data import verses as verses_lib


class ChapterPair(NamedTuple):
  """One example: a chapter reference, its verse numbers and joined text."""

  ref: str
  verses: str
  es: str
  en: str

  def verse_refs(self) -> list[str]:
    """The verses' references, as `bible_es_en` names them ('Acts 1:3')."""
    return [f'{self.ref}:{number}' for number in self.verses.split()]


def group_chapters(pairs: list[bible.VersePair]) -> list[ChapterPair]:
  """Groups consecutive verse pairs of one chapter into a chapter pair.

  Args:
    pairs: verse pairs in module order, as `bible.build_splits` gives them.

  Returns:
    One ChapterPair per run of verses whose references share 'Book C'.
  """
  def chapter_of(pair: bible.VersePair) -> str:
    return pair.ref.rpartition(':')[0]

  chapters = []
  for ref, group in itertools.groupby(pairs, key=chapter_of):
    group = list(group)
    chapters.append(ChapterPair(
        ref=ref,
        verses=' '.join(pair.ref.rpartition(':')[2] for pair in group),
        es=verses_lib.join([pair.es for pair in group]),
        en=verses_lib.join([pair.en for pair in group]),
    ))
  return chapters


class BibleChaptersEsEn(tfds.core.GeneratorBasedBuilder):
  """Spanish (RV1909) - English (WEB) Bible chapters, split by book."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {
      '1.0.0': "Initial release: bible_es_en's verse pairs grouped by "
               'chapter, verses joined by "<v> ".',
  }

  def __init__(self, *, imp_dir: str | pathlib.Path | None = None, **kwargs):
    """Creates the builder.

    Args:
      imp_dir: see `bible.BibleEsEn`; for tests.
      **kwargs: passed to `tfds.core.GeneratorBasedBuilder`.
    """
    super().__init__(**kwargs)
    self._imp_dir = imp_dir

  def _info(self) -> tfds.core.DatasetInfo:
    return bible.dataset_info(self, __doc__, ('es', 'en', 'ref', 'verses'))

  def _split_generators(self, dl_manager):
    del dl_manager  # Offline: the text comes from installed SWORD modules.
    return {name: self._generate_examples(group_chapters(pairs))
            for name, pairs in bible.module_splits(self._imp_dir).items()}

  def _generate_examples(self, chapters: list[ChapterPair]):
    # Integer keys keep book order (shuffling is disabled).
    for index, chapter in enumerate(chapters):
      yield index, chapter._asdict()


def load_chapters(
    split: str, data_dir: str, imp_dir: str | pathlib.Path | None = None
) -> list[ChapterPair]:
  """Returns a split's chapters in book order, preparing the data if needed."""
  source = bible.prepared_source(split, data_dir, imp_dir, BibleChaptersEsEn)
  examples = source.__getitems__(range(len(source)))
  return [ChapterPair(**{name: value.decode('utf-8')
                         for name, value in example.items()})
          for example in examples]


def load_pairs(
    split: str, data_dir: str, imp_dir: str | pathlib.Path | None = None
) -> list[tuple[str, str]]:
  """Returns a split's `(es, en)` chapter pairs, as `load_chapters` orders them."""
  return [(chapter.es, chapter.en)
          for chapter in load_chapters(split, data_dir, imp_dir)]
