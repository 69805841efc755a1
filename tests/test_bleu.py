"""BLEU through our detokenisation agrees with sacrebleu called directly."""

import numpy as np
import pytest
import sacrebleu

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
