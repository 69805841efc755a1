"""Tests for the SWORD reader and the `bible_es_en` TFDS dataset."""

import shutil
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from attention_jax.data import bible
from attention_jax.data import sword

SPANISH_IMP = """\
$$$[ Module Heading ]

$$$[ Testament 1 Heading ]
<milestone type="x-importer" subType="x-osis2mod" n="$Rev: 3769 $"/>
$$$Genesis 0:0
<div canonical="true" osisID="Gen" sID="gen2" type="book"/> <title level="1" type="main">Génesis</title>
$$$Genesis 1:0
<chapter n="1" osisID="Gen.1" sID="Gen.1"/>
$$$Genesis 1:1
<w lemma="strong:H7225">EN el principio</w> <w lemma="strong:H1254">crió</w> <w lemma="strong:H0430">Dios</w> <w lemma="strong:H8064">los cielos</w> <w lemma="strong:H0776">y la tierra</w>.
$$$Genesis 1:2
<w lemma="strong:H0559">Y dijo</w>: ¡<w lemma="strong:H1961">Sea</w> la luz! <w lemma="strong:H2233">esposa</w><transChange type="added">mía</transChange>, <w lemma="strong:H3318">sáca</w><transChange type="added">lo</transChange> <w lemma="strong:H1">ahora</w>.
$$$Genesis 1:3
Este versículo sólo está en español.
$$$Genesis 1:4
Este versículo está vacío en inglés.
$$$Genesis 1:5
Y habló.
$$$Genesis 1:6
Y fué la tarde y la mañana, y habló otra vez.
$$$Genesis 1:7
Y el nombre de su mujer era Noemí.
$$$Genesis 1:8
Sí.
$$$Ruth 1:1
Y ACONTECIÓ en los días que gobernaban los jueces, que hubo hambre.
$$$Ruth 1:2
El nombre de aquel varón era Elimelech.
$$$Daniel 1:1
Y el nombre de su mujer era Noemí.
$$$Daniel 1:2
Y el Señor entregó en su mano á Joacim.
"""

ENGLISH_IMP = """\
$$$[ Module Heading ]

$$$Genesis 0:0
<div sID="gen2" type="front"/> <title level="1" type="main">Preface to the World English Bible</title> The Holy Bible is a collection of books.
$$$Genesis 1:0
<chapter n="1" osisID="Gen.1" sID="Gen.1"/>
$$$Genesis 1:1
<div sID="gen25" type="x-p"/><title type="x-heading">The Creation</title><w lemma="strong:H7225">In</w> <w lemma="strong:H7225">the</w> <w lemma="strong:H7225">beginning</w>, <w lemma="strong:H0430">God</w><note placement="foot"><reference type="annotateRef">1:1 </reference>The Hebrew word rendered “God” is “Elohim”.</note><w lemma="strong:H1254">created</w> <w lemma="strong:H8064">the heavens</w> &amp; <w lemma="strong:H0776">the earth</w>.
$$$Genesis 1:2
<w lemma="strong:H0430">God</w> <w lemma="strong:H0559">said</w>, <q marker="" who="God">“<w lemma="strong:H1961">Let</w> <w>there</w> <w>be</w> <w>light</w>!”</q><w>My</w> bride, <w>Yahweh</w>’s<note placement="foot">a note</note>, take it<note type="crossReference"><reference osisRef="Gen.2.1">Gen 2:1</reference></note> now.
$$$Genesis 1:4
<note placement="foot">Some manuscripts omit this verse.</note>
$$$Genesis 1:5
God spoke to all the people of the land and to all the elders of every tribe, saying these words to them, and they listened to him for a very long time, from the morning until the evening came.
$$$Genesis 1:6
The name of the man was Elimelech.
$$$Genesis 1:7
His wife was called Naomi.
$$$Genesis 1:8
Yes, indeed it is so.
$$$Ruth 1:1
In the days when the judges judged, there was a famine.
$$$Ruth 1:2
The name of the man was Elimelech.
$$$Daniel 1:1
In the third year of the reign of Jehoiakim.
$$$Daniel 1:2
The Lord gave Jehoiakim into his hand.
$$$Tobit 1:1
The book of the words of Tobit.
"""


@pytest.fixture(name='imp_dir')
def fixture_imp_dir(tmp_path):
  imp_dir = tmp_path / 'imp'
  imp_dir.mkdir()
  (imp_dir / f'{bible.SPANISH_MODULE}.imp').write_text(SPANISH_IMP)
  (imp_dir / f'{bible.ENGLISH_MODULE}.imp').write_text(ENGLISH_IMP)
  return imp_dir


def test_parse_imp_cleans_markup_and_skips_headings():
  english = sword.parse_imp(ENGLISH_IMP)
  assert english[('Genesis', 1, 1)] == (
      'In the beginning, God created the heavens & the earth.'
  )
  assert english[('Genesis', 1, 2)] == (
      'God said, “Let there be light!” My bride, Yahweh’s, take it now.'
  )
  spanish = sword.parse_imp(SPANISH_IMP)
  assert spanish[('Genesis', 1, 2)] == (
      'Y dijo: ¡Sea la luz! esposa mía, sácalo ahora.'
  )
  assert all(chapter > 0 and verse > 0 for _, chapter, verse in english)
  assert ('Genesis', 1, 4) not in english  # Only a footnote.
  assert next(iter(spanish)) == ('Genesis', 1, 1)


def test_builder_on_fixture_splits_and_filters(imp_dir, tmp_path):
  data_dir = str(tmp_path / 'tfds')
  refs = {split: bible.load_refs(split, data_dir, imp_dir=imp_dir)
          for split in ('train', 'validation', 'test')}
  pairs = {split: bible.load_pairs(split, data_dir, imp_dir=imp_dir)
           for split in ('train', 'validation', 'test')}

  # 1:3 lacks English, 1:4 is empty in English, 1:5 is 3x+ longer in English,
  # 1:6's English and 1:7's Spanish text also occur in held-out books.
  assert refs['train'] == ['Genesis 1:1', 'Genesis 1:2', 'Genesis 1:8']
  assert refs['validation'] == ['Daniel 1:1', 'Daniel 1:2']
  assert refs['test'] == ['Ruth 1:1', 'Ruth 1:2']
  assert pairs['train'][0] == (
      'EN el principio crió Dios los cielos y la tierra.',
      'In the beginning, God created the heavens & the earth.',
  )
  assert pairs['train'][2] == ('Sí.', 'Yes, indeed it is so.')
  held_out = {text for split in ('validation', 'test')
              for pair in pairs[split] for text in pair}
  assert not held_out & {text for pair in pairs['train'] for text in pair}


def test_builder_reads_back_through_tfds_data_source(imp_dir, tmp_path):
  source = bible.prepared_source('test', str(tmp_path / 'tfds'), imp_dir)
  assert len(source) == 2
  assert source[1] == {
      'es': 'El nombre de aquel varón era Elimelech.'.encode(),
      'en': b'The name of the man was Elimelech.',
      'ref': b'Ruth 1:2',
  }


def test_lengths_compatible_keeps_short_verses():
  assert bible.lengths_compatible('Y lloró Jesús.', 'Jesus wept.')
  assert bible.lengths_compatible('Sí.', 'Yes, indeed it is so.')
  assert not bible.lengths_compatible('Y habló.', 'x' * 61)


def test_missing_module_error_names_module_and_packages():
  with pytest.raises(sword.SwordModuleMissingError) as error:
    sword.load_module('attentionJaxNoSuchModule')
  assert 'attentionJaxNoSuchModule' in str(error.value)
  assert sword.INSTALL_HINT in str(error.value)
  assert sword.INSTALL_HINT == (
      'sudo apt-get install sword-text-sparv sword-text-web libsword-utils'
  )


def test_missing_mod2imp_error_names_packages(monkeypatch, tmp_path):
  monkeypatch.setenv('PATH', str(tmp_path))
  with pytest.raises(sword.SwordModuleMissingError, match='libsword-utils'):
    sword.load_module(bible.SPANISH_MODULE)


@pytest.mark.skipif(
    not (shutil.which('imp2vs') and shutil.which('mod2imp')),
    reason='needs imp2vs and mod2imp: apt-get install libsword-utils',
)
def test_load_module_runs_mod2imp_on_sword_path(monkeypatch, tmp_path):
  module = 'attentionJaxFixture'
  data_path = f'modules/texts/rawtext/{module.lower()}/'
  (tmp_path / data_path).mkdir(parents=True)
  (tmp_path / 'mods.d').mkdir()
  (tmp_path / 'mods.d' / f'{module.lower()}.conf').write_text(
      f'[{module}]\nDataPath=./{data_path}\nModDrv=RawText\n'
      'SourceType=OSIS\nEncoding=UTF-8\n'
  )
  (tmp_path / 'fixture.imp').write_text(SPANISH_IMP)
  subprocess.run(
      ['imp2vs', str(tmp_path / 'fixture.imp'), '-o', str(tmp_path / data_path)],
      check=True, capture_output=True,
  )
  monkeypatch.setenv('SWORD_PATH', str(tmp_path))
  assert sword.load_module(module) == sword.parse_imp(SPANISH_IMP)


@pytest.fixture(name='real_data_dir', scope='session')
def fixture_real_data_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('bible_tfds'))
  try:
    bible.prepared_source('train', data_dir)
  except sword.SwordModuleMissingError as error:
    pytest.skip(f'real SWORD modules not installed: {error}')
  return data_dir


def _books(refs):
  return {ref.rsplit(' ', 1)[0] for ref in refs}


def test_real_splits_sizes_books_and_no_leaks(real_data_dir):
  examples = {split: bible.load_verse_pairs(split, real_data_dir)
              for split in ('train', 'validation', 'test')}
  pairs = {split: [(ex.es, ex.en) for ex in split_examples]
           for split, split_examples in examples.items()}
  refs = {split: [ex.ref for ex in split_examples]
          for split, split_examples in examples.items()}

  assert 27_000 <= len(pairs['train']) <= 30_000
  assert 800 <= len(pairs['validation']) <= 1_000
  assert 1_300 <= len(pairs['test']) <= 1_600
  assert _books(refs['test']) == set(bible.TEST_BOOKS)
  assert _books(refs['validation']) == set(bible.VALIDATION_BOOKS)
  assert len(_books(refs['train'])) == 66 - 11  # No deuterocanon.
  for split in ('validation', 'test'):
    held_es = {es for es, _ in pairs[split]}
    held_en = {en for _, en in pairs[split]}
    assert not any(es in held_es or en in held_en for es, en in pairs['train'])

  train = dict(zip(refs['train'], pairs['train']))
  assert train['Genesis 1:1'] == (
      'EN el principio crió Dios los cielos y la tierra.',
      'In the beginning, God created the heavens and the earth.',
  )
  assert train['John 11:35'] == ('Y lloró Jesús.', 'Jesus wept.')
  assert not any(c in text for pair in train.values() for text in pair
                 for c in '<>&')


def test_real_dataset_is_registered_and_needs_no_tensorflow(real_data_dir):
  source = tfds.data_source('bible_es_en', split='test', data_dir=real_data_dir)
  assert len(source) == len(bible.load_pairs('test', real_data_dir))
  assert 'tensorflow' not in sys.modules
