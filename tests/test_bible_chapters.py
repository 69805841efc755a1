"""Chapter-level translation: the `bible_chapters_es_en` dataset, its verse
separator, windows of whole verses, and verse- and chapter-level scores.

The dataset is built from SWORD-style `mod2imp` text written by the tests
(tests/test_bible_data.py shows the format); scores are checked against
sacrebleu called directly.
"""

import dataclasses
import functools
import random

import ml_collections
import pytest
import sacrebleu

from attention_jax.data import bible
from attention_jax.data import bible_chapters
from attention_jax.data import cleaning
from attention_jax.data import corpora
from attention_jax.data import input_pipeline
from attention_jax.data import tokenizer
from attention_jax.data import verse_windows
from attention_jax.data import verses
from attention_jax.decode import bleu
from attention_jax.decode import chapter_scores
from attention_jax.train import evaluate

SPLITS = ('train', 'validation', 'test')
_SPANISH = ('casa perro gato arbol pajaro rio ciudad jardin viejo joven '
            'rapido lento rojo verde azul grande').split()
_ENGLISH = ('house dog cat tree bird river city garden old young fast slow '
            'red green blue big').split()
# (book, chapters, verses per chapter): two training books, a test book
# (Ruth) and a validation book (Daniel).
_BOOKS = (('Genesis', 3, 9), ('Exodus', 2, 12), ('Ruth', 2, 20),
          ('Daniel', 1, 5))


def _imp(verse_texts: dict[tuple[str, int, int], str]) -> str:
  lines = ['$$$[ Module Heading ]', '']
  for (book, chapter, verse), text in verse_texts.items():
    if verse == 1:
      lines += [f'$$${book} {chapter}:0',
                f'<chapter n="{chapter}" sID="{book}.{chapter}"/>']
    lines += [f'$$${book} {chapter}:{verse}', text]
  return '\n'.join(lines) + '\n'


def _modules() -> tuple[str, str]:
  """Spanish and English imp text; the English words translate the Spanish.

  Genesis 2:4 is missing in English, Exodus 1:3's Spanish is also Ruth 1:2's
  (so it leaves training), and Genesis 1:5's English is over three times
  longer than its Spanish (dropped by the length filter).
  """
  rng = random.Random(0)
  spanish, english = {}, {}
  for book, chapters, count in _BOOKS:
    for chapter in range(1, chapters + 1):
      for verse in range(1, count + 1):
        words = [rng.randrange(len(_SPANISH)) for _ in range(rng.randint(4, 9))]
        key = (book, chapter, verse)
        spanish[key] = ' '.join(_SPANISH[w] for w in words).capitalize() + '.'
        english[key] = ' '.join(_ENGLISH[w] for w in words).capitalize() + '.'
  del english[('Genesis', 2, 4)]
  spanish[('Exodus', 1, 3)] = spanish[('Ruth', 1, 2)]
  english[('Genesis', 1, 5)] = ' '.join(['dog house'] * 30) + '.'
  return _imp(spanish), _imp(english)


@pytest.fixture(name='imp_dir')
def fixture_imp_dir(tmp_path):
  imp_dir = tmp_path / 'imp'
  imp_dir.mkdir()
  spanish, english = _modules()
  (imp_dir / f'{bible.SPANISH_MODULE}.imp').write_text(spanish)
  (imp_dir / f'{bible.ENGLISH_MODULE}.imp').write_text(english)
  return imp_dir


def _books(refs):
  return {ref.rsplit(' ', 1)[0] for ref in refs}


def test_chapters_hold_exactly_the_verse_splits_verses(imp_dir, tmp_path):
  data_dir = str(tmp_path / 'tfds')
  for split in SPLITS:
    chapters = bible_chapters.load_chapters(split, data_dir, imp_dir)
    verse_pairs = bible.load_verse_pairs(split, data_dir, imp_dir)
    assert _books(c.ref for c in chapters) == _books(
        p.ref.rpartition(':')[0] for p in verse_pairs)
    # Verse for verse, in order: references, Spanish and English.
    assert [ref for c in chapters for ref in c.verse_refs()] == [
        p.ref for p in verse_pairs]
    assert [v for c in chapters for v in verses.split(c.es)] == [
        p.es for p in verse_pairs]
    assert [v for c in chapters for v in verses.split(c.en)] == [
        p.en for p in verse_pairs]
  train = {c.ref: c for c in bible_chapters.load_chapters(
      'train', data_dir, imp_dir)}
  assert [c.ref for c in bible_chapters.load_chapters(
      'test', data_dir, imp_dir)] == ['Ruth 1', 'Ruth 2']
  assert list(train) == ['Genesis 1', 'Genesis 2', 'Genesis 3', 'Exodus 1',
                         'Exodus 2']
  # The verse missing in English, the leaked one and the one of
  # incompatible lengths are gone from both sides of their chapters.
  assert train['Genesis 1'].verses == '1 2 3 4 6 7 8 9'
  assert train['Genesis 2'].verses == '1 2 3 5 6 7 8 9'
  assert train['Exodus 1'].verses.split() == [
      str(v) for v in range(1, 13) if v != 3]


def _sentencepiece(tmp_path, imp_dir):
  texts = [verse for pairs in bible.module_splits(imp_dir).values()
           for pair in pairs for verse in (pair.es, pair.en)]
  return tokenizer.train_or_load(
      texts, 60, str(tmp_path / 'chapters.model'),
      user_defined_symbols=(verses.SEPARATOR,))


def test_separator_round_trips_through_the_tokenizer(imp_dir, tmp_path):
  sp = _sentencepiece(tmp_path, imp_dir)
  separator_id = sp.piece_to_id(verses.SEPARATOR)
  assert separator_id != tokenizer.UNK_ID
  chapters = bible_chapters.load_chapters(
      'train', str(tmp_path / 'tfds'), imp_dir)
  for chapter in chapters:
    for text in (chapter.es, chapter.en):
      chapter_verses = verses.split(text)
      ids = sp.encode(text)
      # The chapter encodes as its verses' own encodings, one separator
      # piece between two verses, ...
      expected = []
      for verse_ids in sp.encode(chapter_verses):
        expected += ([separator_id] if expected else []) + verse_ids
      assert ids == expected
      assert ids.count(separator_id) == len(chapter_verses) - 1
      # ... and decodes back to the same verses.
      assert verses.split(sp.decode(ids)) == chapter_verses


def test_splitting_a_translation_back_into_verses():
  chapter = ['In the beginning.', 'God said, “Light.”', 'It was good.']
  assert verses.join(chapter) == (
      'In the beginning.<v> God said, “Light.”<v> It was good.')
  assert verses.split(verses.join(chapter)) == chapter
  # However the model spaces its separators.
  assert verses.split('One. <v>Two.<v>  Three. ') == ['One.', 'Two.', 'Three.']
  assert verses.split('No separator at all.') == ['No separator at all.']


def test_windows_split_at_verse_boundaries_and_cover_every_verse_once():
  rng = random.Random(1)
  for _ in range(200):
    count = rng.randint(1, 30)
    max_len = rng.randint(8, 120)
    lengths = [[rng.randint(1, 40) for _ in range(count)] for _ in range(2)]
    windows = verse_windows.windows(lengths, max_len)
    assert [i for w in windows for i in w] == list(range(count))

    def pieces(window, side):
      return sum(lengths[side][i] + 1 for i in window)

    for number, window in enumerate(windows):
      fits = all(pieces(window, side) <= max_len for side in (0, 1))
      assert fits or len(window) == 1  # Only a lone verse may overflow.
      if number + 1 < len(windows):  # Greedy: the next verse did not fit.
        longer = range(window.start, window.stop + 1)
        assert any(pieces(longer, side) > max_len for side in (0, 1))
  with pytest.raises(ValueError, match='different numbers of verses'):
    verse_windows.windows([[1, 2], [3]], 10)


def test_window_pairs_join_whole_verses_of_both_sides(imp_dir, tmp_path):
  sp = _sentencepiece(tmp_path, imp_dir)
  chapters = bible_chapters.load_pairs('train', str(tmp_path / 'tfds'),
                                       imp_dir)
  max_len = 40
  windows = verse_windows.window_pairs(sp, chapters, max_len,
                                       verses.SEPARATOR)
  assert len(windows) > len(chapters)  # Every chapter is longer than 40.
  for side in (0, 1):
    assert [v for w in windows for v in verses.split(w[side])] == [
        v for c in chapters for v in verses.split(c[side])]
  for source, target in windows:
    assert len(verses.split(source)) == len(verses.split(target))
    assert (len(verses.split(source)) == 1
            or max(len(sp.encode(source)), len(sp.encode(target))) + 1
            <= max_len)


def _references_and_hypotheses():
  references = [
      verses.join(['In the beginning God created the heavens and the earth.',
                   'The earth was formless and empty.',
                   'God said, “Let there be light,” and there was light.']),
      verses.join(['God saw the light, and saw that it was good.',
                   'God called the light “day”, and the darkness “night”.']),
      verses.join(['There was evening and there was morning, the first day.',
                   'God said, “Let there be an expanse.”',
                   'God made the expanse.', 'It was so.']),
  ]
  hypotheses = [
      verses.join(['In the beginning God made heaven and earth.',
                   'The earth was empty and formless.',
                   'God said: let light be, and light was.']),
      verses.join(['God saw that the light was good.',
                   'He called the light day and the darkness night.']),
      verses.join(['It was evening and morning, a first day.',
                   'God said, “Let there be a firmament.”',
                   'God made the firmament.', 'So it was.']),
  ]
  return hypotheses, references


def test_verse_score_equals_sacrebleu_on_the_reassembled_verses():
  hypotheses, references = _references_and_hypotheses()
  scores = chapter_scores.score(hypotheses, references, verses.SEPARATOR)
  hyp_verses = [v for h in hypotheses for v in verses.split(h)]
  ref_verses = [v for r in references for v in verses.split(r)]
  assert scores.misaligned == 0 and scores.chapters == 3
  assert scores.verse.bleu == pytest.approx(
      sacrebleu.corpus_bleu(hyp_verses, [ref_verses]).score, abs=1e-9)
  assert scores.verse.chrf == pytest.approx(
      sacrebleu.corpus_chrf(hyp_verses, [ref_verses]).score, abs=1e-9)
  assert 0 < scores.verse.bleu < 100
  # Whole chapters, separators removed: the verses joined by spaces.
  hyp_chapters = [' '.join(verses.split(h)) for h in hypotheses]
  ref_chapters = [' '.join(verses.split(r)) for r in references]
  assert scores.chapter.bleu == pytest.approx(
      sacrebleu.corpus_bleu(hyp_chapters, [ref_chapters]).score, abs=1e-9)
  assert scores.verse_references == ref_verses
  assert scores.results('test')['test_verse_bleu'] == scores.verse.bleu
  assert scores.results('test')['test_chapters_misaligned'] == 0
  perfect = chapter_scores.score(references, references, verses.SEPARATOR)
  assert perfect.verse.bleu == pytest.approx(100)
  assert perfect.chapter.bleu == pytest.approx(100)


def test_a_misaligned_translation_is_counted_and_scored_whole():
  hypotheses, references = _references_and_hypotheses()
  # The second chapter's translation lost its separator: one verse for two.
  merged = ' '.join(verses.split(hypotheses[1]))
  hypotheses[1] = merged
  scores = chapter_scores.score(hypotheses, references, verses.SEPARATOR)
  assert scores.misaligned == 1
  assert scores.results('test')['test_chapters_misaligned'] == 1
  hyp_segments = (verses.split(hypotheses[0]) + [merged]
                  + verses.split(hypotheses[2]))
  ref_segments = (verses.split(references[0])
                  + [' '.join(verses.split(references[1]))]
                  + verses.split(references[2]))
  assert scores.verse_hypotheses == hyp_segments
  assert scores.verse_references == ref_segments
  assert scores.verse.bleu == pytest.approx(
      sacrebleu.corpus_bleu(hyp_segments, [ref_segments]).score, abs=1e-9)
  # Nothing dropped: every word of both sides is in the verse corpus.
  for side, chapters in ((hyp_segments, hypotheses),
                         (ref_segments, references)):
    assert ' '.join(side).split() == ' '.join(
        chapter_scores.without_separators(c, verses.SEPARATOR)
        for c in chapters).split()


class _EchoTranslator:
  """Translates a window to its own verses, upper-cased, and records it."""

  def __init__(self):
    self.windows = []

  def translate(self, params, sp, sentences):
    del params, sp
    self.windows += sentences
    return [verses.join([verse.upper() for verse in verses.split(sentence)])
            for sentence in sentences]


def test_long_chapters_are_translated_window_by_window_and_joined(
    imp_dir, tmp_path):
  sp = _sentencepiece(tmp_path, imp_dir)
  pairs = bible_chapters.load_pairs('train', str(tmp_path / 'tfds'), imp_dir)
  translator = _EchoTranslator()
  max_len = 50
  scores, windows = evaluate.translate_and_score_chapters(
      translator, None, sp, pairs, max_len, verses.SEPARATOR)
  assert windows == translator.windows
  assert len(windows) > len(pairs)
  assert all(len(verses.split(w)) == 1 or len(sp.encode(w)) + 1 <= max_len
             for w in windows)
  # Each chapter's translation holds its windows' translations, in order,
  # so every chapter is aligned, verse for verse.
  assert scores.misaligned == 0
  assert scores.verse_hypotheses == [
      v.upper() for s, _ in pairs for v in verses.split(s)]
  assert scores.chapter_hypotheses == [
      chapter_scores.without_separators(s, verses.SEPARATOR).upper()
      for s, _ in pairs]
  assert scores.chapter.bleu == pytest.approx(bleu.corpus_bleu(
      scores.chapter_hypotheses, scores.chapter_references))


def test_pipeline_trains_the_separator_and_sees_windows(
    imp_dir, tmp_path, monkeypatch):
  corpus = corpora.get(ml_collections.ConfigDict(
      {'dataset': 'bible_chapters_es_en', 'source': 'es', 'target': 'en'}))
  monkeypatch.setitem(corpora._CORPORA, 'bible_chapters_es_en',  # pylint: disable=protected-access
                      dataclasses.replace(corpus, load_pairs=functools.partial(
                          bible_chapters.load_pairs, imp_dir=imp_dir)))
  data_config = ml_collections.ConfigDict({
      'dataset': 'bible_chapters_es_en', 'source': 'es', 'target': 'en',
      'data_dir': str(tmp_path / 'tfds'), 'vocab_size': 60,
      # Rows of 40 pieces: every chapter is longer, and longer in
      # characters than cleaning's limit for a side of 40 pieces.
      'max_len': 40,
  })
  data = input_pipeline.load(data_config, str(tmp_path / 'workdir'))
  assert data.verse_separator == verses.SEPARATOR
  sp = data.tokenizer
  separator_id = sp.piece_to_id(verses.SEPARATOR)
  assert separator_id != tokenizer.UNK_ID
  assert sp.encode(verses.join(['Casa.', 'Perro.'])).count(separator_id) == 1
  test = bible_chapters.load_pairs('test', str(tmp_path / 'tfds'), imp_dir)
  assert data.test_text == test  # Whole chapters, none cleaned away.
  assert min(len(es) for es, _ in test) > cleaning.char_limit(40)
  for source, target in data.train + data.valid:
    assert max(len(source), len(target)) <= 40
    assert list(source).count(separator_id) == list(target).count(
        separator_id)
  assert any(separator_id in source for source, _ in data.train)
