"""Paired bootstrap resampling of corpus BLEU over test sentences (and of
answer accuracy over the test sequences of a diagnostic task).

BLEU is not an average of sentence scores, so resampling works on each
sentence's sufficient statistics (n-gram matches and totals, hypothesis and
reference length): a resampled corpus sums the rows it drew and scores the
sum. With several seeds per variant, every resample draws one set of sentence
indices, scores each seed's translations of those sentences, and compares the
means over seeds, so the interval covers test-set sampling of the mean BLEU
that the report prints. A second interval and p-value also resample each
side's seeds (with replacement, within every sentence resample), so they
include the seed-to-seed spread of training: a difference can be significant
over test sentences yet within seed noise. With fewer than two seeds on a side
there is nothing to resample there, so that interval and p-value are nan
(not available) rather than a copy of the sentence-only ones.

The p-value is that of the shifted paired bootstrap (Koehn, 2004;
Berg-Kirkpatrick et al., 2012): the resampled differences d_i, shifted by the
observed difference d to play the null hypothesis, are compared with it in
absolute value, p = (1 + #{|d_i - d| >= |d|}) / (1 + samples). sacrebleu's
`--paired-bs` draws the same resamples (numpy's default_rng, seed 12345) but
counts |d_i| - mean|d_i| > |d|, one tail with a strict `>`. The two agree
where the resampled difference keeps its sign and the systems clearly differ;
for near-identical systems they part: identical translations get
p = 1 / (1 + samples) from sacrebleu and p = 1 here.

Answer accuracy is resampled the same way: its per-sequence statistics are
(answers right, answers asked), and a resample's accuracy is the ratio of
the sums (`accuracy_from_stats`), the figure the diagnostic task reports.
"""

import collections
import dataclasses
import math
from typing import Callable, Sequence

import numpy as np
from sacrebleu.tokenizers import tokenizer_13a

from attention_jax.decode import bleu

MAX_ORDER = 4
# Columns of a statistics row: matches of order 1..4, totals of order 1..4,
# hypothesis length, reference length.
NUM_STATS = 2 * MAX_ORDER + 2
_tokenize = tokenizer_13a.Tokenizer13a()


def _ngrams(words: list[str]) -> collections.Counter:
  return collections.Counter(
      tuple(words[i:i + n])
      for n in range(1, MAX_ORDER + 1)
      for i in range(len(words) - n + 1)
  )


def sentence_stats(
    hypotheses: Sequence[str], references: Sequence[str]
) -> np.ndarray:
  """[sentences, NUM_STATS] BLEU statistics, 13a tokenisation (sacrebleu's).

  Both sides are first normalised as `decode/bleu.py` does, so the summed
  statistics score what `bleu.corpus_bleu` scores, and a hypothesis equal to
  its reference up to the tokenizer's normalisation scores 100.
  """
  if len(hypotheses) != len(references):
    raise ValueError(
        f'{len(hypotheses)} hypotheses for {len(references)} references.'
    )
  stats = np.zeros((len(hypotheses), NUM_STATS), np.int64)
  for row, (hyp, ref) in enumerate(zip(hypotheses, references)):
    hyp_words = _tokenize(bleu.normalize(hyp)).split()
    ref_words = _tokenize(bleu.normalize(ref)).split()
    hyp_counts, ref_counts = _ngrams(hyp_words), _ngrams(ref_words)
    for gram, count in hyp_counts.items():
      order = len(gram) - 1
      stats[row, order] += min(count, ref_counts[gram])
    for order in range(MAX_ORDER):
      stats[row, MAX_ORDER + order] = max(0, len(hyp_words) - order)
    stats[row, -2:] = len(hyp_words), len(ref_words)
  return stats


def bleu_from_stats(totals: np.ndarray) -> np.ndarray:
  """Corpus BLEU (0-100) of summed statistics `[..., NUM_STATS]`.

  sacrebleu's defaults: geometric mean of the four precisions with 'exp'
  smoothing (the k-th order with no match counts as 1 / (2^k * total)),
  times the brevity penalty.
  """
  totals = np.asarray(totals, np.float64)
  matches = totals[..., :MAX_ORDER]
  counts = totals[..., MAX_ORDER:2 * MAX_ORDER]
  hyp_len, ref_len = totals[..., -2], totals[..., -1]
  # 'exp' smoothing: the k-th zero-match order (k = 1, 2, ...) gets 1 / 2^k.
  zero = matches == 0
  smoothed = np.where(zero, 1.0 / 2.0 ** np.cumsum(zero, axis=-1), matches)
  with np.errstate(divide='ignore', invalid='ignore'):
    log_precision = np.log(smoothed / counts)
  mean_log = np.where(
      (counts > 0).all(-1), log_precision.mean(-1), -np.inf
  )
  with np.errstate(divide='ignore', invalid='ignore'):
    brevity = np.where(
        hyp_len < ref_len, 1.0 - ref_len / np.maximum(hyp_len, 1), 0.0
    )
  bleu = 100.0 * np.exp(mean_log + brevity)
  return np.where(hyp_len > 0, bleu, 0.0)


def accuracy_from_stats(totals: np.ndarray) -> np.ndarray:
  """Answer accuracy (0-1) of summed `[..., 2]` (right, asked) statistics;
  0 where nothing was asked."""
  totals = np.asarray(totals, np.float64)
  return totals[..., 0] / np.maximum(totals[..., 1], 1.0)


def resample_indices(
    num_sentences: int, num_samples: int, seed: int
) -> np.ndarray:
  """[num_samples, num_sentences] draws with replacement (sacrebleu's RNG)."""
  rng = np.random.default_rng(seed)
  return rng.choice(
      num_sentences, size=(num_samples, num_sentences), replace=True
  )


@dataclasses.dataclass(frozen=True)
class Comparison:
  """A variant's mean score (BLEU, or answer accuracy) over seeds minus the
  baseline's."""
  difference: float
  # Test sentences resampled: the uncertainty of the test set.
  ci_low: float
  ci_high: float
  p_value: float
  # Test sentences and, on each side, the seeds resampled: adds the
  # seed-to-seed spread of training, which the sentence bootstrap ignores.
  # nan where a side has fewer than MIN_SEEDS seeds.
  seeds_ci_low: float
  seeds_ci_high: float
  seeds_p_value: float
  num_samples: int


# Resampling fewer seeds than this with replacement resamples nothing.
MIN_SEEDS = 2


def _resampled_scores(stats: np.ndarray, draws: np.ndarray,
                      score: Callable[[np.ndarray], np.ndarray]
                      ) -> np.ndarray:
  """[seeds, samples] score of each seed on each resample.

  `draws[i, j]` is how often resample i drew sentence j, so a resample's
  summed statistics are one matrix product.
  """
  return np.stack([score(draws @ s) for s in stats])


def _seed_resampled_mean(scores: np.ndarray, rng: np.random.Generator
                         ) -> np.ndarray:
  """[samples] mean over seeds drawn with replacement, per resample."""
  num_seeds, num_samples = scores.shape
  picks = rng.integers(0, num_seeds, size=(num_samples, num_seeds))
  return np.take_along_axis(scores.T, picks, axis=1).mean(axis=1)


def _interval_and_p(differences: np.ndarray, observed: float):
  shifted = np.abs(differences - observed)
  p_value = (np.sum(shifted >= abs(observed)) + 1) / (len(differences) + 1)
  low, high = np.percentile(differences, [2.5, 97.5])
  return float(low), float(high), float(p_value)


def paired_bootstrap(
    baseline: np.ndarray,
    variant: np.ndarray,
    num_samples: int = 1000,
    seed: int = 12345,
    score: Callable[[np.ndarray], np.ndarray] = bleu_from_stats,
) -> Comparison:
  """Compares two systems' statistics `[seeds, sentences, stats]`.

  `score` turns summed statistics `[..., stats]` into the corpus score:
  `bleu_from_stats` (NUM_STATS columns, the default) or
  `accuracy_from_stats` (2 columns, a diagnostic task's test sequences).

  Returns:
    The observed difference of mean score (variant - baseline), its 95%
    percentile interval over the resamples, and the p-value of the null
    hypothesis that the two are equally good; both once with the test
    sentences resampled, and once with each side's seeds resampled as well
    (with few seeds a rough allowance for training noise, not an exact one;
    nan where either side has fewer than `MIN_SEEDS` seeds).
  """
  baseline, variant = np.asarray(baseline), np.asarray(variant)
  if baseline.ndim == 2:
    baseline = baseline[None]
  if variant.ndim == 2:
    variant = variant[None]
  if baseline.shape[1:] != variant.shape[1:]:
    raise ValueError(
        f'Statistics of different test sets: baseline {baseline.shape[1]} '
        f'sentences, variant {variant.shape[1]}.'
    )
  observed = float(
      np.mean(score(variant.sum(axis=1)))
      - np.mean(score(baseline.sum(axis=1)))
  )
  indices = resample_indices(baseline.shape[1], num_samples, seed)
  draws = np.zeros((num_samples, baseline.shape[1]))
  np.add.at(draws, (np.arange(num_samples)[:, None], indices), 1.0)
  variant_scores = _resampled_scores(variant, draws, score)
  baseline_scores = _resampled_scores(baseline, draws, score)
  sentences = _interval_and_p(
      variant_scores.mean(0) - baseline_scores.mean(0), observed
  )
  if min(len(baseline), len(variant)) < MIN_SEEDS:
    seeds = (math.nan, math.nan, math.nan)
  else:
    rng = np.random.default_rng(seed + 1)
    seeds = _interval_and_p(
        _seed_resampled_mean(variant_scores, rng)
        - _seed_resampled_mean(baseline_scores, rng),
        observed,
    )
  return Comparison(observed, *sentences, *seeds, num_samples)


LEVEL = 0.05


def is_significant(p_value: float, level: float = LEVEL) -> bool:
  """p < level; a missing (nan) p-value is not significant."""
  return p_value < level
