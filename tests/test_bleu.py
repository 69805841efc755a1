"""BLEU through our detokenisation agrees with sacrebleu called directly.

Both scorers (decode/bleu.py and ablation/significance.py) normalise both
sides the way the tokenizer does, so output equal to the reference up to that
normalisation scores 100.
"""

import unicodedata

import numpy as np
import pytest
import sacrebleu

from attention_jax.ablation import significance
from attention_jax.data import tokenizer
from attention_jax.decode import bleu
from attention_jax.decode.translator import ids_to_text

SENTENCES = [
    'In the beginning God created the heavens and the earth.',
    'The earth was formless and empty.',
    'God said, “Let there be light,” and there was light.',
    'God saw the light, and saw that it was good.',
] * 20


def test_bleu_of_detokenised_ids_matches_sacrebleu(tmp_path):
  sp = tokenizer.train_or_load(SENTENCES, 40, str(tmp_path / 'spm.model'))
  hypotheses = [
      'In the beginning God made the heavens and the earth.',
      'The earth was empty.',
      'God said, “Let there be light,” and light was.',
      'God saw that the light was good.',
  ]
  ids = [np.asarray(sp.encode(h) + [tokenizer.EOS_ID, 7, 7]) for h in hypotheses]
  detokenised = [ids_to_text(sp, row) for row in ids]
  assert detokenised == hypotheses
  references = SENTENCES[:4]
  expected = sacrebleu.corpus_bleu(hypotheses, [references]).score
  assert 0 < expected < 100
  assert bleu.corpus_bleu(detokenised, references) == expected


def test_perfect_translations_score_100():
  assert bleu.corpus_bleu(SENTENCES[:4], SENTENCES[:4]) == pytest.approx(100)


# What the tokenizer normalises (NFKC, Unicode spaces) and what 13a rewrites.
UNICODE_REFERENCES = [
    'Café, résumé and naïve façade — déjà vu.',
    'Tiếng Việt có dấu: người, được, những.',
    '한국어 문장은 자모로 분해될 수 있다.',
    'The ﬁrst ﬂoor costs ½ of 10² … really.',
    'Ｆｕｌｌ－ｗｉｄｔｈ ＡＢＣ and ｶﾀｶﾅ text, ＆amp; more.',
    'Tom &amp; Jerry said &quot;hi&quot; to &lt;you&gt; today.',
    'A non\u2011breaking hyphen, an en–dash and a minus − sign-off.',
    '“Curly quotes”, ‘single’ and «guillemets» with\u00a0no-break space.',
    'Ångström (\u212b), Kelvin (\u212a) and ohm (\u2126) signs.',
    '  Extra   spaces\tand a tab  around  words . ',
]
FORMS = ('NFC', 'NFD', 'NFKC', 'NFKD')


def _significance_bleu(hypotheses, references):
  stats = significance.sentence_stats(hypotheses, references)
  return float(significance.bleu_from_stats(stats.sum(0)))


@pytest.mark.parametrize('reference_form', FORMS)
@pytest.mark.parametrize('hypothesis_form', FORMS)
def test_hypothesis_equal_to_reference_up_to_unicode_form_scores_100(
    reference_form, hypothesis_form):
  references = [unicodedata.normalize(reference_form, r)
                for r in UNICODE_REFERENCES]
  hypotheses = [unicodedata.normalize(hypothesis_form, r)
                for r in UNICODE_REFERENCES]
  for scorer in (bleu.corpus_bleu, _significance_bleu):
    assert scorer(hypotheses, references) == pytest.approx(100, abs=1e-9)
    assert scorer(references, references) == pytest.approx(100, abs=1e-9)


def test_13a_escapes_score_as_the_characters_they_stand_for():
  hypotheses = ['Tom & Jerry said "hi" to <you> today.',
                'Full-width & more, really.']
  references = ['Tom &amp; Jerry said &quot;hi&quot; to &lt;you&gt; today.',
                'Full-width ＆amp; more, really.']
  for scorer in (bleu.corpus_bleu, _significance_bleu):
    assert scorer(hypotheses, references) == pytest.approx(100, abs=1e-9)


@pytest.mark.parametrize('form', FORMS)
def test_a_perfect_system_scores_100_against_references_in_any_form(
    tmp_path, form):
  # A perfect model emits the reference's pieces; decoding them gives the
  # tokenizer-normalised text (NFD references once scored 56.9 here).
  references = [unicodedata.normalize(form, r) for r in UNICODE_REFERENCES]
  sp = tokenizer.train_or_load(references * 20, 100,
                               str(tmp_path / 'spm.model'))
  outputs = [
      ids_to_text(sp, np.asarray(sp.encode(r) + [tokenizer.EOS_ID]))
      for r in references
  ]
  assert outputs == [bleu.normalize(r) for r in references]
  for scorer in (bleu.corpus_bleu, _significance_bleu):
    assert scorer(outputs, references) == pytest.approx(100, abs=1e-9)


def test_normalised_text_scores_as_sacrebleu_scores_it():
  references = [bleu.normalize(r) for r in UNICODE_REFERENCES]
  rng = np.random.default_rng(0)
  hypotheses = [' '.join(w for w in r.split() if rng.random() < 0.7)
                for r in references]
  expected = sacrebleu.corpus_bleu(hypotheses, [references]).score
  assert 0 < expected < 100
  assert bleu.corpus_bleu(hypotheses, references) == expected
  assert _significance_bleu(hypotheses, references) == pytest.approx(
      expected, abs=1e-9)


@pytest.mark.parametrize('form', FORMS)
def test_chrf_is_sacrebleus_on_normalised_text(form):
  references = [unicodedata.normalize(form, r) for r in UNICODE_REFERENCES]
  rng = np.random.default_rng(1)
  hypotheses = [' '.join(w for w in r.split() if rng.random() < 0.7)
                for r in references]
  scores = bleu.corpus_scores(hypotheses, references)
  normalised = [bleu.normalize(h) for h in hypotheses]
  normalised_references = [bleu.normalize(r) for r in references]
  expected = sacrebleu.corpus_chrf(normalised, [normalised_references]).score
  assert 0 < expected < 100
  assert scores.chrf == expected
  assert scores.bleu == bleu.corpus_bleu(hypotheses, references)
  # Equal up to the tokenizer's normalisation is perfect for chrF too.
  assert bleu.corpus_scores(normalised_references, references).chrf == (
      pytest.approx(100))


def test_scores_carry_sacrebleus_signatures_of_the_default_metrics():
  scores = bleu.corpus_scores(SENTENCES[:2], SENTENCES[1:3])
  version = f'version:{sacrebleu.__version__}'
  assert scores.bleu_signature == (
      f'nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|{version}')
  assert scores.chrf_signature == (
      f'nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|{version}')
  with pytest.raises(ValueError, match='2 hypotheses for 3 references'):
    bleu.corpus_scores(SENTENCES[:2], SENTENCES[:3])
