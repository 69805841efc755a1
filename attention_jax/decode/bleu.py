"""Corpus BLEU and chrF of detokenised text, by sacrebleu, normalised first.

A model can only produce what its sentencepiece vocabulary decodes to, and
sentencepiece normalises every text it encodes (NFKC plus its NMT rules:
control characters dropped, Unicode spaces made plain, runs of whitespace
collapsed). References are read raw, so a reference in another Unicode form
(decomposed accents, say) could never be matched exactly: a perfect system
scored 65.2 against NFD references. Both sides are therefore passed through
`normalize`, the tokenizer's own rule, before scoring; sacrebleu's 13a
tokenisation then treats both alike. On text that is already normalised
(NFKC, single spaces) the score is sacrebleu's. chrF (sacrebleu's default,
chrF2) scores the same normalised text, and each score comes with sacrebleu's
signature, the string papers quote to say how a score was computed.
`ablation/significance.py` scores through the same `normalize`.
"""

import dataclasses
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

  Raises:
    ValueError: the two sides differ in length.
  """
  return sacrebleu.corpus_bleu(*_normalized(hypotheses, references)).score


@dataclasses.dataclass(frozen=True)
class Scores:
  """Corpus scores of one set of translations, each with its signature.

  A signature is sacrebleu's, e.g.
  'nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0'.
  """
  bleu: float
  chrf: float
  bleu_signature: str
  chrf_signature: str


def corpus_scores(hypotheses: Sequence[str],
                  references: Sequence[str]) -> Scores:
  """sacrebleu's default corpus BLEU and chrF of normalised text.

  BLEU is `corpus_bleu`'s; chrF is sacrebleu's CHRF (chrF2: character
  6-grams, beta 2, no word n-grams) of the same normalised text.

  Raises:
    ValueError: the two sides differ in length.
  """
  normalized = _normalized(hypotheses, references)
  bleu = sacrebleu.metrics.BLEU()
  chrf = sacrebleu.metrics.CHRF()
  return Scores(
      bleu=bleu.corpus_score(*normalized).score,
      chrf=chrf.corpus_score(*normalized).score,
      bleu_signature=str(bleu.get_signature()),
      chrf_signature=str(chrf.get_signature()),
  )


def _normalized(hypotheses: Sequence[str], references: Sequence[str]
                ) -> tuple[list[str], list[list[str]]]:
  """Both sides normalised, as sacrebleu takes them (one reference stream)."""
  if len(hypotheses) != len(references):
    raise ValueError(
        f'{len(hypotheses)} hypotheses for {len(references)} references.'
    )
  return ([normalize(h) for h in hypotheses],
          [[normalize(r) for r in references]])
