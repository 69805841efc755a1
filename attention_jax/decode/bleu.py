"""Corpus BLEU on detokenised text, by sacrebleu, after one normalisation.

A model can only produce what its sentencepiece vocabulary decodes to, and
sentencepiece normalises every text it encodes (NFKC plus its NMT rules:
control characters dropped, Unicode spaces made plain, runs of whitespace
collapsed). References are read raw, so a reference in another Unicode form
(decomposed accents, say) could never be matched exactly: a perfect system
scored 65.2 against NFD references. Both sides are therefore passed through
`normalize`, the tokenizer's own rule, before scoring; sacrebleu's 13a
tokenisation then treats both alike. On text that is already normalised
(NFKC, single spaces) the score is sacrebleu's. `ablation/significance.py`
scores through the same `normalize`.
"""

from typing import Sequence

import sacrebleu
import sentencepiece as spm

# sentencepiece's default rule, which data/tokenizer.py trains with.
NORMALIZATION_RULE = 'nmt_nfkc'
_NORMALIZER = spm.SentencePieceNormalizer(
    rule_name=NORMALIZATION_RULE,
    add_dummy_prefix=False,
    escape_whitespaces=False,
    remove_extra_whitespaces=True,
)


def normalize(text: str) -> str:
  """`text` as the tokenizer normalises it: what a model could emit for it."""
  return _NORMALIZER.normalize(text)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
  """sacrebleu's default corpus BLEU (13a, exp smoothing) of normalised text.

  Both sides go through `normalize`, so a hypothesis equal to its reference up
  to what the tokenizer normalises scores 100.
  """
  if len(hypotheses) != len(references):
    raise ValueError(
        f'{len(hypotheses)} hypotheses for {len(references)} references.'
    )
  return sacrebleu.corpus_bleu(
      [normalize(h) for h in hypotheses], [[normalize(r) for r in references]]
  ).score
