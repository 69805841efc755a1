"""`bible_es_en`: Spanish-English verse pairs, the default offline corpus.

Spanish is the Reina-Valera 1909 (SWORD module `spaRV1909eb`), English the
World English Bible (`engWEB2015eb`); both are public domain and ship as Debian
packages, so preparing the dataset needs no network:

    sudo apt-get install sword-text-sparv sword-text-web libsword-utils

Splits are fixed by whole books, so no held-out chapter leaks through
neighbouring verses:

  * test: Acts, Ruth, Jonah, Esther, Galatians.
  * validation: Daniel, Philippians, James, Joel, I John, Lamentations.
  * train: every other book present in both modules (so not the English
    deuterocanon), minus every pair whose Spanish or English text also occurs,
    as the exact same string, in a validation or test book (the epistles'
    greeting "Grace to you and peace from God our Father and the Lord Jesus
    Christ." is one).

A pair is kept when the verse has text in both modules and neither side is
more than `MAX_LENGTH_RATIO` times longer than the other; lengths are counted
in characters, raised to `RATIO_LENGTH_FLOOR`. Examples are stored in book
order (no shuffling), as `array_record` files, so reading needs no TensorFlow:

    pairs = load_pairs('train', data_dir='/tmp/tfds')
"""

from collections.abc import Mapping
import pathlib
from typing import NamedTuple

import tensorflow_datasets as tfds

from attention_jax.data import sword

SPANISH_MODULE = 'spaRV1909eb'
ENGLISH_MODULE = 'engWEB2015eb'
TEST_BOOKS = ('Acts', 'Ruth', 'Jonah', 'Esther', 'Galatians')
VALIDATION_BOOKS = (
    'Daniel', 'Philippians', 'James', 'Joel', 'I John', 'Lamentations'
)
# Both translations follow the verse division of the original closely, so a
# 3x length gap means a versification shift or a verse missing on one side.
MAX_LENGTH_RATIO = 3.0
# Lengths below this count as this for the ratio, so that a short verse
# ("Jesus wept." / "Y lloró Jesús.") is not dropped for a few extra characters.
RATIO_LENGTH_FLOOR = 20
FILE_FORMAT = 'array_record'


class VersePair(NamedTuple):
  """One example: a verse reference and its Spanish and English text."""

  ref: str
  es: str
  en: str


def split_of_book(book: str) -> str:
  """Returns the split ('train', 'validation' or 'test') a book belongs to."""
  if book in TEST_BOOKS:
    return 'test'
  if book in VALIDATION_BOOKS:
    return 'validation'
  return 'train'


def lengths_compatible(es: str, en: str) -> bool:
  """Whether neither side is more than MAX_LENGTH_RATIO times the other."""
  es_len = max(len(es), RATIO_LENGTH_FLOOR)
  en_len = max(len(en), RATIO_LENGTH_FLOOR)
  return max(es_len, en_len) <= MAX_LENGTH_RATIO * min(es_len, en_len)


def _held_out_texts(verses: Mapping[sword.VerseKey, str]) -> set[str]:
  return {text for (book, _, _), text in verses.items()
          if split_of_book(book) != 'train'}


def build_splits(
    spanish: Mapping[sword.VerseKey, str],
    english: Mapping[sword.VerseKey, str],
) -> dict[str, list[VersePair]]:
  """Pairs the verses of two modules and assigns them to the fixed splits.

  Args:
    spanish: clean verses of the Spanish module, in module order.
    english: clean verses of the English module.

  Returns:
    `{'train': [...], 'validation': [...], 'test': [...]}`, each list in the
    Spanish module's verse order.
  """
  held_out_es = _held_out_texts(spanish)
  held_out_en = _held_out_texts(english)
  splits = {'train': [], 'validation': [], 'test': []}
  for key, es in spanish.items():
    en = english.get(key)
    if en is None or not lengths_compatible(es, en):
      continue
    book, chapter, verse = key
    split = split_of_book(book)
    if split == 'train' and (es in held_out_es or en in held_out_en):
      continue
    splits[split].append(VersePair(f'{book} {chapter}:{verse}', es, en))
  return splits


def module_splits(
    imp_dir: str | pathlib.Path | None = None,
) -> dict[str, list[VersePair]]:
  """`build_splits` of the two SWORD modules; every Bible builder's source.

  Args:
    imp_dir: read `<imp_dir>/<module>.imp` files instead of the installed
      modules (see `sword.load_module`).

  Raises:
    sword.SwordModuleMissingError: a module or `mod2imp` is not installed.
  """
  return build_splits(
      sword.load_module(SPANISH_MODULE, imp_dir),
      sword.load_module(ENGLISH_MODULE, imp_dir),
  )


def dataset_info(builder: tfds.core.GeneratorBasedBuilder, description: str,
                 features: tuple[str, ...]) -> tfds.core.DatasetInfo:
  """The DatasetInfo of a builder over the two SWORD modules: text features
  `features`, supervised ('es', 'en'), stored in the order generated."""
  return tfds.core.DatasetInfo(
      builder=builder,
      description=description,
      features=tfds.features.FeaturesDict(
          {name: tfds.features.Text() for name in features}),
      supervised_keys=('es', 'en'),
      disable_shuffling=True,
      homepage='https://www.crosswire.org/sword/',
      license='Public domain (Reina-Valera 1909, World English Bible).',
  )


class BibleEsEn(tfds.core.GeneratorBasedBuilder):
  """Spanish (RV1909) - English (WEB) Bible verse pairs, split by book."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release: spaRV1909eb / engWEB2015eb verse pairs, '
               'splits by whole books, held-out texts removed from train.',
  }

  def __init__(self, *, imp_dir: str | pathlib.Path | None = None, **kwargs):
    """Creates the builder.

    Args:
      imp_dir: read `<imp_dir>/<module>.imp` files (in `mod2imp`'s format)
        instead of the installed SWORD modules; for tests. Use a data_dir of
        its own, since prepared data does not record where it came from.
      **kwargs: passed to `tfds.core.GeneratorBasedBuilder`.
    """
    super().__init__(**kwargs)
    self._imp_dir = imp_dir

  def _info(self) -> tfds.core.DatasetInfo:
    return dataset_info(self, __doc__, ('es', 'en', 'ref'))

  def _split_generators(self, dl_manager):
    del dl_manager  # Offline: the text comes from installed SWORD modules.
    return {name: self._generate_examples(pairs)
            for name, pairs in module_splits(self._imp_dir).items()}

  def _generate_examples(self, pairs: list[VersePair]):
    # With shuffling disabled TFDS stores examples in the order of their
    # integer keys, which keeps book order.
    for index, pair in enumerate(pairs):
      yield index, pair._asdict()


def prepared_source(
    split: str, data_dir: str, imp_dir: str | pathlib.Path | None = None,
    builder_class: type[tfds.core.GeneratorBasedBuilder] = BibleEsEn,
):
  """Prepares a Bible dataset in data_dir if needed; returns a split's source.

  Args:
    split: 'train', 'validation' or 'test'.
    data_dir: the TFDS data directory.
    imp_dir: see `module_splits`.
    builder_class: `BibleEsEn` (verses), or another builder whose `__init__`
      takes `imp_dir` (bible_chapters.py's chapters).

  Returns:
    TFDS's random-access `array_record` data source: `len()` and indexing,
    with text features as UTF-8 `bytes`.
  """
  builder = builder_class(data_dir=data_dir, file_format=FILE_FORMAT,
                          imp_dir=imp_dir)
  builder.download_and_prepare(file_format=FILE_FORMAT)
  return builder.as_data_source(split)


def load_verse_pairs(
    split: str, data_dir: str, imp_dir: str | pathlib.Path | None = None
) -> list[VersePair]:
  """Returns a split's examples in stored (book) order, preparing if needed."""
  source = prepared_source(split, data_dir, imp_dir)
  # One batched read takes half the time of indexing records one by one.
  examples = source.__getitems__(range(len(source)))
  return [VersePair(**{name: value.decode('utf-8')
                       for name, value in example.items()})
          for example in examples]


def load_pairs(
    split: str, data_dir: str, imp_dir: str | pathlib.Path | None = None
) -> list[tuple[str, str]]:
  """Returns a split's `(es, en)` pairs in stored order, preparing if needed."""
  return [(pair.es, pair.en)
          for pair in load_verse_pairs(split, data_dir, imp_dir)]


def load_refs(
    split: str, data_dir: str, imp_dir: str | pathlib.Path | None = None
) -> list[str]:
  """Returns a split's verse references (`'Genesis 1:1'`), as in load_pairs."""
  return [pair.ref for pair in load_verse_pairs(split, data_dir, imp_dir)]
