"""Corpus BLEU on detokenised text, by sacrebleu."""

from typing import Sequence

import sacrebleu


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
  """sacrebleu's default corpus BLEU (13a tokenisation, exp smoothing)."""
  if len(hypotheses) != len(references):
    raise ValueError(
        f'{len(hypotheses)} hypotheses for {len(references)} references.'
    )
  return sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score
