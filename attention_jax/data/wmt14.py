"""`wmt14_translate/de-en`: TFDS's WMT14 German-English, read without TensorFlow.

Splits are TFDS's: train (Europarl v7, Common Crawl, News Commentary v9,
about 4.5M pairs), validation (newstest2013) and test (newstest2014).

Reading the prepared `array_record` files needs no TensorFlow. Preparing
them does (TFDS extracts the downloaded archives with `tf.io.gfile`), so it
is done here only when TensorFlow is installed; otherwise prepare once
elsewhere:

    import tensorflow_datasets as tfds
    tfds.builder('wmt14_translate/de-en', data_dir=DIR).download_and_prepare(
        file_format='array_record')

and set `config.data.data_dir` to DIR.
"""

import importlib.util

import tensorflow_datasets as tfds
# Imported directly: `tensorflow_datasets` skips its dataset modules when
# TensorFlow is missing, and this one needs none.
from tensorflow_datasets.translate import wmt14

NAME = 'wmt14_translate/de-en'
FILE_FORMAT = 'array_record'
# Records read per batched call: batched reads took 2.5x less time than
# indexing one by one on bible_es_en, and chunks bound the memory held by raw
# records.
READ_CHUNK = 65_536


class TensorflowMissingError(RuntimeError):
  """WMT14 is not prepared and cannot be prepared without TensorFlow."""


def builder(data_dir: str) -> tfds.core.DatasetBuilder:
  """The WMT14 de-en builder of data_dir, prepared or not."""
  return wmt14.Wmt14Translate(config='de-en', data_dir=data_dir)


def prepared_builder(data_dir: str) -> tfds.core.DatasetBuilder:
  """The WMT14 de-en builder of data_dir, preparing the data if needed.

  Raises:
    TensorflowMissingError: the data is not prepared and TensorFlow, needed
      to prepare it, is not installed. Checked before anything is downloaded.
  """
  wmt_builder = builder(data_dir)
  if not wmt_builder.is_prepared():
    if importlib.util.find_spec('tensorflow') is None:
      raise TensorflowMissingError(
          f'{NAME} is not prepared in {data_dir}, and preparing it needs '
          'TensorFlow: `pip install tensorflow`, or prepare it elsewhere with '
          f"`tfds.builder('{NAME}', data_dir=DIR).download_and_prepare("
          f"file_format='{FILE_FORMAT}')` and set config.data.data_dir=DIR "
          '(without TensorFlow, TFDS reads a gs:// DIR through gcsfs: '
          '`pip install gcsfs`).'
      )
    wmt_builder.download_and_prepare(file_format=FILE_FORMAT)
  return wmt_builder


def load_pairs(split: str, data_dir: str) -> list[tuple[str, str]]:
  """Returns a split's `(de, en)` pairs in stored order, preparing if needed."""
  source = prepared_builder(data_dir).as_data_source(split)
  pairs = []
  for start in range(0, len(source), READ_CHUNK):
    chunk = range(start, min(start + READ_CHUNK, len(source)))
    # surrogateescape: a stray invalid byte is skipped by cleaning.py with
    # the pair it is in, instead of failing the whole split.
    pairs.extend((example['de'].decode('utf-8', 'surrogateescape'),
                  example['en'].decode('utf-8', 'surrogateescape'))
                 for example in source.__getitems__(chunk))
  return pairs
