"""Validation loss, BLEU and chrF of a set of parameters."""

import math
from typing import Callable, Sequence

import jax
import numpy as np
import sentencepiece as spm

from attention_jax import sharding
from attention_jax.data import verse_windows
from attention_jax.data import verses
from attention_jax.decode import bleu
from attention_jax.decode import chapter_scores
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


def translate_chapters(
    translator: Translator,
    params,
    sp: spm.SentencePieceProcessor,
    chapters: Sequence[str],
    max_len: int,
    separator: str,
) -> tuple[list[str], list[str]]:
  """Translations of chapters, each whole or window by window.

  A chapter whose source fits in max_len pieces (EOS included) is translated
  whole; a longer one is cut into windows of whole verses
  (verse_windows.source_windows), and its windows' translations are joined
  with the separator. All windows of all chapters are translated together,
  so batches stay full.

  Returns:
    (one translation per chapter, the windows translated).
  """
  windows = [verse_windows.source_windows(sp, chapter, max_len, separator)
             for chapter in chapters]
  flat = [window for chapter_windows in windows for window in chapter_windows]
  translated = iter(translator.translate(params, sp, flat))
  return ([verses.join([next(translated) for _ in chapter_windows], separator)
           for chapter_windows in windows], flat)


def translate_and_score_chapters(
    translator: Translator,
    params,
    sp: spm.SentencePieceProcessor,
    pairs: Sequence[tuple[str, str]],
    max_len: int,
    separator: str,
) -> tuple[chapter_scores.ChapterScores, list[str]]:
  """(chapter and verse scores, the windows translated) of chapter pairs."""
  hypotheses, windows = translate_chapters(
      translator, params, sp, [s for s, _ in pairs], max_len, separator)
  scores = chapter_scores.score(hypotheses, [t for _, t in pairs], separator)
  return scores, windows
