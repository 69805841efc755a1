"""Tests for the corpus registry, WMT14, parallel_text and cleaning."""

import collections
import importlib.util
import logging
import random
import sys

import pytest
import tensorflow_datasets as tfds

from attention_jax.data import cleaning
from attention_jax.data import corpora
from attention_jax.data import input_pipeline
from attention_jax.data import parallel_text
from attention_jax.data import wmt14
from attention_jax.model import from_config
from attention_jax.train import config_check
from experiments.configs import bible as bible_config
from experiments.configs import parallel_text as parallel_text_config
from experiments.configs import wmt14_base

# A toy English-German lexicon: sentences are word-for-word translations, so
# a pair's direction is visible from its text.
_LEXICON = dict(zip(
    'the a house dog cat tree bird river city garden old young quick slow '
    'red green blue big small sees finds likes buys paints builds follows '
    'today tomorrow always never here there and but with without under over '
    'near far'.split(),
    'das ein Haus Hund Katze Baum Vogel Fluss Stadt Garten alt jung schnell '
    'langsam rot gruen blau gross klein sieht findet mag kauft malt baut '
    'folgt heute morgen immer nie hier dort und aber mit ohne unter ueber '
    'nah fern'.split(),
))


def _sentence_pairs(count: int, seed: int) -> list[tuple[str, str]]:
  """(English, German) toy sentences, distinct for distinct seeds."""
  rng = random.Random(seed)
  words = sorted(_LEXICON)
  pairs = []
  for index in range(count):
    chosen = [rng.choice(words) for _ in range(rng.randint(4, 9))]
    pairs.append((' '.join(chosen) + f' {seed}-{index}.',
                  ' '.join(_LEXICON[w] for w in chosen) + f' {seed}-{index}.'))
  return pairs


def _write_lines(path, lines: list[bytes]) -> None:
  path.write_bytes(b''.join(line + b'\n' for line in lines))


# Hostile aligned lines (source, target) as bytes, with what cleaning says.
_HOSTILE = [
    (b'', b'An empty source.', cleaning.EMPTY),
    (b'   ', b'A blank source.', cleaning.EMPTY),
    (b'A NUL\x00 byte.', b'Ein NUL-Byte.', cleaning.CONTROL_CHARACTERS),
    (b'\x1b[31mRed\x1b[0m text.', b'Roter Text.', cleaning.CONTROL_CHARACTERS),
    (b'Bad \xff\xfe bytes.', b'Kaputte Bytes.', cleaning.INVALID_UTF8),
    (b'A C1 \xc2\x9b control.', b'Ein C1-Zeichen.',
     cleaning.CONTROL_CHARACTERS),
    (b'x' * 1_000_000, b'Eine riesige Zeile.', cleaning.TOO_LONG),
]


def _hostile_aligned(prefix, source: str, target: str,
                     good: list[tuple[str, str]]) -> None:
  """Writes PREFIX.source/target: `good` pairs with _HOSTILE ones between."""
  sources, targets = [], []
  for index, (src, tgt) in enumerate(good):
    sources.append(src.encode())
    targets.append(tgt.encode())
    if index < len(_HOSTILE):
      sources.append(_HOSTILE[index][0])
      targets.append(_HOSTILE[index][1])
  _write_lines(prefix.with_name(f'{prefix.name}.{source}'), sources)
  _write_lines(prefix.with_name(f'{prefix.name}.{target}'), targets)


def _parallel_text_data_config(tmp_path, **paths):
  config = parallel_text_config.get_config()
  config.data.source, config.data.target = 'en', 'de'
  config.data.data_dir = str(tmp_path / 'data_dir')
  config.data.update(paths)
  return config.data


def test_clean_counts_each_reason_and_keeps_pairs_exactly():
  records = [
      ('Hello.', 'Hallo.'),
      ('', 'Leer.'),
      ('Tab\tinside is fine.', 'Tab\tinnen ist gut.'),
      ('one', 'two', 'three'),
      ('only one field',),
      ('Bell\x07.', 'Glocke.'),
      ('Delete\x7f.', 'Loeschen.'),
      ('Bad \udcff byte.', 'Kaputt.'),
      ('y' * 33, 'Lang.'),
      ('y' * 32, 'Gerade noch.'),
      ('Line\nbreak.', 'Umbruch.'),
  ]
  kept, skipped = cleaning.clean(records, max_chars=32)
  assert kept == [('Hello.', 'Hallo.'),
                  ('Tab\tinside is fine.', 'Tab\tinnen ist gut.'),
                  ('y' * 32, 'Gerade noch.')]
  assert skipped == {cleaning.NOT_TWO_FIELDS: 2, cleaning.EMPTY: 1,
                     cleaning.TOO_LONG: 1, cleaning.INVALID_UTF8: 1,
                     cleaning.CONTROL_CHARACTERS: 3}
  assert cleaning.summary('train', 28_713, skipped, 4096) == (
      'train: skipped 8 of 28,713 pairs: 2 not two fields, 1 empty, '
      '1 longer than 4,096 characters, 1 invalid UTF-8, 3 control characters.'
  )
  assert cleaning.summary('test', 5, collections.Counter(), 64) == (
      'test: kept all 5 pairs.'
  )


def test_hostile_aligned_files_are_read_and_cleaned(tmp_path):
  good = _sentence_pairs(10, seed=0)
  _hostile_aligned(tmp_path / 'train', 'en', 'de', good)
  # Windows line endings, a byte-order mark and a tab are ordinary input.
  (tmp_path / 'dev.en').write_bytes(b'\xef\xbb\xbfOne\ttwo.\r\nThree.\r\n')
  (tmp_path / 'dev.de').write_bytes(b'Eins\tzwei.\r\nDrei.')
  data_config = _parallel_text_data_config(
      tmp_path, train=str(tmp_path / 'train'),
      validation=str(tmp_path / 'dev'), test=str(tmp_path / 'dev'))

  records = corpora.load_splits(data_config, data_config.data_dir)
  kept, skipped = cleaning.clean(records['train'], cleaning.char_limit(64))
  assert len(records['train']) == len(good) + len(_HOSTILE)
  assert kept == good
  assert skipped == collections.Counter(reason for *_, reason in _HOSTILE)
  assert records['validation'] == [('One\ttwo.', 'Eins\tzwei.'),
                                   ('Three.', 'Drei.')]


def test_tsv_lines_without_two_fields_are_corrupt(tmp_path):
  tsv = tmp_path / 'all.tsv'
  _write_lines(tsv, [b'Hello.\tHallo.', b'One\tEins\tExtra', b'No tab here',
                     b'Trailing tab.\tSchluss.\t', b'\t', b'Bye.\tTschuess.'])
  data_config = _parallel_text_data_config(
      tmp_path, train=str(tsv), validation=str(tsv), test=str(tsv))
  records = corpora.load_splits(data_config, data_config.data_dir)['train']
  kept, skipped = cleaning.clean(records, cleaning.char_limit(64))
  assert kept == [('Hello.', 'Hallo.'), ('Bye.', 'Tschuess.')]
  assert skipped == {cleaning.NOT_TWO_FIELDS: 3, cleaning.EMPTY: 1}


def test_mismatched_line_counts_name_both_files_and_counts(tmp_path):
  _write_lines(tmp_path / 'train.en', [b'One.', b'Two.', b'Three.'])
  _write_lines(tmp_path / 'train.de', [b'Eins.', b'Zwei.'])
  prefix = str(tmp_path / 'train')
  data_config = _parallel_text_data_config(
      tmp_path, train=prefix, validation=prefix, test=prefix)
  with pytest.raises(ValueError) as error:
    corpora.load_splits(data_config, data_config.data_dir)
  message = str(error.value)
  assert f'{prefix}.en has 3 lines but {prefix}.de has 2' in message
  assert 'config.data.train' in message


def test_check_dataset_refuses_empty_paths_and_missing_files(tmp_path):
  _write_lines(tmp_path / 'train.en', [b'One.'])
  _write_lines(tmp_path / 'train.de', [b'Eins.'])
  prefix = str(tmp_path / 'train')
  with pytest.raises(ValueError, match=r'config\.data\.test is empty'):
    corpora.check_dataset(_parallel_text_data_config(
        tmp_path, train=prefix, validation=prefix))
  with pytest.raises(FileNotFoundError) as error:
    corpora.check_dataset(_parallel_text_data_config(
        tmp_path, train=prefix, validation=str(tmp_path / 'dev'),
        test=prefix))
  assert f'no file {tmp_path / "dev.en"}' in str(error.value)
  assert 'PREFIX.en and PREFIX.de' in str(error.value)
  with pytest.raises(FileNotFoundError, match='nothing.tsv'):
    corpora.check_dataset(_parallel_text_data_config(
        tmp_path, train=str(tmp_path / 'nothing.tsv'), validation=prefix,
        test=prefix))
  corpora.check_dataset(_parallel_text_data_config(
      tmp_path, train=prefix, validation=prefix, test=prefix))


def test_check_dataset_refuses_unknown_names_and_languages():
  data_config = bible_config.get_config().data
  corpora.check_dataset(data_config)
  data_config.dataset = 'wmt14'
  with pytest.raises(ValueError) as error:
    corpora.check_dataset(data_config)
  assert str(error.value) == (
      "Unknown config.data.dataset='wmt14'; valid choices are: "
      'bible_chapters_es_en, bible_es_en, parallel_text, '
      'wmt14_translate/de-en.'
  )
  data_config = wmt14_base.get_config().data
  corpora.check_dataset(data_config)
  data_config.target = 'fr'
  with pytest.raises(ValueError, match="pairs 'de' with 'en'"):
    corpora.check_dataset(data_config)


def test_vocab_keys_separate_corpora_and_keep_the_bible_name(tmp_path):
  for name, content in (('a', b'One.\n'), ('b', b'Two.\n'), ('c', b'One.\n')):
    (tmp_path / name).mkdir()
    for suffix in ('en', 'de'):
      (tmp_path / name / f'train.{suffix}').write_bytes(content)
  keys = {name: corpora.vocab_key(_parallel_text_data_config(
      tmp_path, **dict.fromkeys(corpora.SPLITS, str(tmp_path / name / 'train'))
  )) for name in 'abc'}
  assert keys['a'] != keys['b']
  assert keys['a'] == keys['c']  # Same files elsewhere: same vocabulary.
  assert keys['a'].startswith('parallel_text_ende_')
  assert corpora.vocab_key(bible_config.get_config().data) == (
      'bible_es_en_esen'
  )
  assert corpora.vocab_key(wmt14_base.get_config().data) == (
      'wmt14_translate_de-en_ende'
  )


def test_input_pipeline_runs_on_a_hostile_corpus_and_logs(tmp_path, caplog):
  _hostile_aligned(tmp_path / 'train', 'en', 'de', _sentence_pairs(300, 0))
  _hostile_aligned(tmp_path / 'dev', 'en', 'de', _sentence_pairs(20, 1))
  test_tsv = tmp_path / 'test.tsv'
  _write_lines(test_tsv, [b'Hello.\tHallo.', b'Bad\tline\there',
                          b'Bye.\t\x00Tschuess.'])
  data_config = _parallel_text_data_config(
      tmp_path, train=str(tmp_path / 'train'),
      validation=str(tmp_path / 'dev'), test=str(test_tsv))
  data_config.vocab_size = 120
  data_config.max_len = 64

  caplog.set_level(logging.INFO)
  data = input_pipeline.load(data_config, str(tmp_path / 'work'))
  assert len(data.train) == 300
  assert data.valid_text == _sentence_pairs(20, 1)
  assert data.test_text == [('Hello.', 'Hallo.')]
  logged = [record.getMessage() for record in caplog.records]
  assert ('train: skipped 7 of 307 pairs: 2 empty, 1 longer than 1,024 '
          'characters, 1 invalid UTF-8, 3 control characters.') in logged
  assert ('test: skipped 2 of 3 pairs: 1 not two fields, '
          '1 control characters.') in logged
  assert data.tokenizer.decode(data.train[0][0].tolist()[:-1]) == (
      _sentence_pairs(1, 0)[0][0]
  )


def test_all_pairs_corrupt_is_a_clear_error(tmp_path):
  tsv = tmp_path / 'bad.tsv'
  _write_lines(tsv, [b'no tab', b'\x00\tx'])
  data_config = _parallel_text_data_config(
      tmp_path, train=str(tsv), validation=str(tsv), test=str(tsv))
  with pytest.raises(ValueError, match='No usable training pair. train: '
                     'skipped 2 of 2 pairs'):
    input_pipeline.load(data_config, str(tmp_path / 'work'))


class _Records(list):
  """Records served like TFDS's array_record data source."""

  def __getitems__(self, keys):
    return [self[key] for key in keys]


def test_wmt14_reads_english_to_german_under_mock_data(tmp_path):
  # Metadata as left by preparing elsewhere; mock_data serves the records.
  data_dir = tmp_path / 'tfds'
  builder = wmt14.builder(str(data_dir))
  builder.data_path.mkdir(parents=True)
  builder.info.write_to_directory(builder.data_path)
  english_german = {split: _sentence_pairs(count, seed) for split, count, seed
                    in (('train', 300, 0), ('validation', 20, 1),
                        ('test', 30, 2))}
  english_german['train'].append(('An empty German side.', ''))

  def as_data_source(self, split, **kwargs):
    del self, kwargs
    return _Records({'de': de.encode(), 'en': en.encode()}
                    for en, de in english_german[split])

  config = wmt14_base.get_config()
  config.data.data_dir = str(data_dir)
  config.data.vocab_size = 120
  with tfds.testing.mock_data(data_dir=str(data_dir),
                              as_data_source_fn=as_data_source):
    data = input_pipeline.load(config.data, str(tmp_path / 'work'))

  assert data.valid_text == english_german['validation']
  assert data.test_text == english_german['test']
  assert len(data.train) == 300
  source, target = data.train[0]
  assert data.tokenizer.decode(source.tolist()[:-1]) == (
      english_german['train'][0][0]
  )
  assert data.tokenizer.decode(target.tolist()[:-1]) == (
      english_german['train'][0][1]
  )
  assert 'tensorflow' not in sys.modules


@pytest.mark.skipif(importlib.util.find_spec('tensorflow') is not None,
                    reason='with TensorFlow this would download WMT14')
def test_wmt14_unprepared_without_tensorflow_says_how_to_get_it(tmp_path):
  with pytest.raises(wmt14.TensorflowMissingError) as error:
    wmt14.load_pairs('test', str(tmp_path))
  message = str(error.value)
  assert 'pip install tensorflow' in message
  assert "download_and_prepare(file_format='array_record')" in message
  assert 'config.data.data_dir' in message


def test_configs_pass_check_config(tmp_path):
  config = wmt14_base.get_config()
  config_check.check_config(config)
  corpora.check_dataset(config.data)
  model = from_config.transformer_config(config, config.data.vocab_size)
  assert (model.num_encoder_layers, model.num_decoder_layers) == (6, 6)
  assert (model.emb_dim, model.num_heads, model.mlp_dim) == (512, 8, 2048)
  assert not model.pre_layer_norm
  assert config.optimizer.learning_rate == pytest.approx(6.99e-4, rel=1e-3)
  assert config.batch_size * config.data.max_len == 24_576

  prefix = tmp_path / 'corpus'
  _write_lines(prefix.with_suffix('.es'), [b'Hola.'])
  _write_lines(prefix.with_suffix('.en'), [b'Hello.'])
  config = parallel_text_config.get_config()
  config.data.update(dict.fromkeys(corpora.SPLITS, str(prefix)))
  config_check.check_config(config)
  corpora.check_dataset(config.data)
