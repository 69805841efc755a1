"""Validation loss, BLEU and chrF of a set of parameters."""

import math
from typing import Callable, Sequence

import jax
import numpy as np
import sentencepiece as spm

from attention_jax import sharding
from attention_jax.decode import bleu
from attention_jax.decode.translator import Translator


def eval_loss(
    eval_fn: Callable, params, batches: Sequence[dict[str, np.ndarray]], mesh
) -> dict[str, float]:
  """Token-averaged NLL, perplexity and accuracy over all eval batches."""
  totals = None
  for batch in batches:
    # Fetched batch by batch and summed on the host: with every batch's step
    # (and its sums) dispatched ahead, a two-process CPU run on a 2-core
    # machine hung in this loop, one process in the sums and the other in a
    # step, each waiting on its peer's collective; waiting for each batch
    # keeps one program with collectives in flight.
    sums = jax.device_get(eval_fn(params, sharding.to_global(batch, mesh)))
    totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
  tokens = max(float(totals['tokens']), 1.0)
  loss = float(totals['nll_sum']) / tokens
  return {
      'loss': loss,
      'perplexity': math.exp(min(loss, 50.0)),
      'accuracy': float(totals['correct_sum']) / tokens,
  }


def translate_and_score(
    translator: Translator,
    params,
    sp: spm.SentencePieceProcessor,
    pairs: Sequence[tuple[str, str]],
) -> tuple[bleu.Scores, list[str]]:
  """(corpus BLEU and chrF, hypotheses) for (source, reference) pairs."""
  hypotheses = translator.translate(params, sp, [s for s, _ in pairs])
  return bleu.corpus_scores(hypotheses, [t for _, t in pairs]), hypotheses
