"""BLEU statistics and the paired bootstrap, by hand and against sacrebleu."""

import numpy as np
import pytest
import sacrebleu
from sacrebleu.metrics import BLEU
from sacrebleu.significance import PairedTest

from attention_jax.ablation import significance

REFERENCES = [
    'In the beginning God created the heavens and the earth.',
    'The earth was formless and empty.',
    'Darkness was on the surface of the deep.',
    "God's Spirit was hovering over the surface of the waters.",
    'God said, "Let there be light," and there was light.',
    'God saw the light, and saw that it was good.',
    'God divided the light from the darkness.',
    'There was evening and there was morning, the first day.',
] * 5


def _garble(sentence: str, rng: np.random.Generator, keep: float) -> str:
  words = sentence.split()
  kept = [w for w in words if rng.random() < keep]
  return ' '.join(kept) if kept else ''


def _system(keep: float, seed: int) -> list[str]:
  rng = np.random.default_rng(seed)
  return [_garble(r, rng, keep) for r in REFERENCES]


@pytest.mark.parametrize('keep', [1.0, 0.9, 0.6, 0.3, 0.05])
def test_corpus_bleu_of_summed_statistics_is_sacrebleus(keep):
  """Includes corpora with no 4-gram matches (smoothing) and empty lines."""
  hypotheses = _system(keep, seed=3)
  stats = significance.sentence_stats(hypotheses, REFERENCES)
  ours = float(significance.bleu_from_stats(stats.sum(0)))
  theirs = sacrebleu.corpus_bleu(hypotheses, [REFERENCES]).score
  assert ours == pytest.approx(theirs, abs=1e-9)


def test_statistics_of_empty_output_score_zero():
  stats = significance.sentence_stats([''] * 3, REFERENCES[:3])
  assert float(significance.bleu_from_stats(stats.sum(0))) == 0.0


def _stats(matches: int, total: int, length: int = 10) -> list[int]:
  """A sentence whose four n-gram precisions are all matches / total."""
  return [matches] * 4 + [total] * 4 + [length, length]


def test_bootstrap_matches_the_hand_computed_distribution():
  """Two sentences; the baseline scores 50 on any resample.

  The variant's precision is 2/2 on sentence 0 and 1/2 on sentence 1, so a
  resample {0, 0} scores 100, {0, 1} 75 and {1, 1} 50, with probabilities
  1/4, 1/2 and 1/4. The differences are 50, 25, 0 around the observed 25:
  |d - 25| >= 25 with probability 1/2, and the 95% interval is [0, 50].
  """
  baseline = np.array([_stats(1, 2), _stats(1, 2)])
  variant = np.array([_stats(2, 2), _stats(1, 2)])
  result = significance.paired_bootstrap(baseline, variant, num_samples=8000)
  assert result.difference == pytest.approx(25.0)
  assert result.ci_low == pytest.approx(0.0)
  assert result.ci_high == pytest.approx(50.0)
  # Binomial(8000, 1/2) stays within 0.5 +- 0.02 except with p < 1e-3.
  assert result.p_value == pytest.approx(0.5, abs=0.02)


def test_answer_accuracy_is_resampled_as_a_ratio_of_sums():
  """A diagnostic task's sequences: (answers right, answers asked).

  Sequence 0 asks 1 answer and sequence 1 asks 3. The baseline gets every
  answer of sequence 1 only: 3/4 overall; the variant every answer: 1. On
  resamples {0, 0}, {0, 1}, {1, 1} (probabilities 1/4, 1/2, 1/4) the
  baseline scores 0, 3/4 and 1 (a ratio of sums, not a mean of sequence
  accuracies), the variant always 1: differences 1, 1/4, 0 around the
  observed 1/4, and |d - 1/4| >= 1/4 with probability 1/4 + 1/4.
  """
  baseline = np.array([[0, 1], [3, 3]])
  variant = np.array([[1, 1], [3, 3]])
  result = significance.paired_bootstrap(
      baseline, variant, num_samples=8000,
      score=significance.accuracy_from_stats)
  assert result.difference == pytest.approx(0.25)
  assert result.ci_low == pytest.approx(0.0)
  assert result.ci_high == pytest.approx(1.0)
  assert result.p_value == pytest.approx(0.5, abs=0.02)
  same = significance.paired_bootstrap(
      baseline, baseline, score=significance.accuracy_from_stats)
  assert (same.difference, same.p_value) == (0.0, 1.0)


def test_identical_systems_are_not_significantly_different():
  stats = significance.sentence_stats(_system(0.7, 1), REFERENCES)
  result = significance.paired_bootstrap(stats, stats)
  assert result.difference == 0.0
  assert (result.ci_low, result.ci_high) == (0.0, 0.0)
  assert result.p_value == 1.0
  assert not significance.is_significant(result.p_value)


def test_seeds_are_averaged_within_each_resample():
  """Two identical seeds give the one-seed answer on the same resamples."""
  base = significance.sentence_stats(_system(0.5, 1), REFERENCES)
  other = significance.sentence_stats(_system(0.8, 2), REFERENCES)
  one = significance.paired_bootstrap(base, other)
  two = significance.paired_bootstrap(
      np.stack([base, base]), np.stack([other, other])
  )
  sentence_fields = ('difference', 'ci_low', 'ci_high', 'p_value')
  assert ([getattr(two, f) for f in sentence_fields]
          == [getattr(one, f) for f in sentence_fields])


@pytest.mark.parametrize('baseline_seeds, variant_seeds', [(1, 1), (1, 3),
                                                           (2, 1)])
def test_one_seed_on_a_side_resamples_no_seeds(baseline_seeds, variant_seeds):
  """The seed columns are not available rather than a copy of the others.

  Two near-identical systems (0.002-BLEU-like gap) once came out "significant
  with seeds resampled" from one seed a side.
  """
  base = significance.sentence_stats(_system(0.7, 1), REFERENCES)
  other = significance.sentence_stats(_system(0.7, 2), REFERENCES)
  result = significance.paired_bootstrap(
      np.stack([base] * baseline_seeds), np.stack([other] * variant_seeds)
  )
  assert np.isfinite([result.ci_low, result.ci_high, result.p_value]).all()
  assert np.isnan(
      [result.seeds_ci_low, result.seeds_ci_high, result.seeds_p_value]).all()
  assert not significance.is_significant(result.seeds_p_value)


def test_resampling_seeds_widens_the_interval_by_the_seed_spread():
  good = significance.sentence_stats(_system(0.9, 1), REFERENCES)
  poor = significance.sentence_stats(_system(0.4, 2), REFERENCES)
  base = significance.sentence_stats(_system(0.65, 3), REFERENCES)
  # A variant whose seeds disagree wildly, against a steady baseline.
  result = significance.paired_bootstrap(
      np.stack([base, base]), np.stack([good, poor])
  )
  assert result.seeds_ci_high - result.seeds_ci_low > 2 * (
      result.ci_high - result.ci_low)
  assert result.seeds_p_value >= result.p_value


def _sacrebleu_paired_bs(baseline: list[str], variant: list[str]):
  test = PairedTest(
      [('baseline', baseline), ('variant', variant)],
      {'BLEU': BLEU()}, references=[REFERENCES], test_type='bs',
      n_samples=1000,
  )
  _, scores = test()
  return scores['BLEU'][0], scores['BLEU'][1]


@pytest.mark.parametrize('keeps', [(0.5, 0.9), (0.9, 0.4)])
def test_agrees_with_sacrebleu_where_the_difference_keeps_its_sign(keeps):
  """Same resamples (seed 12345), clearly different systems."""
  baseline, variant = _system(keeps[0], 11), _system(keeps[1], 12)
  base_result, variant_result = _sacrebleu_paired_bs(baseline, variant)
  ours = significance.paired_bootstrap(
      significance.sentence_stats(baseline, REFERENCES),
      significance.sentence_stats(variant, REFERENCES),
  )
  assert ours.difference == pytest.approx(
      variant_result.score - base_result.score, abs=1e-6
  )
  assert ours.p_value == pytest.approx(variant_result.p_value)
  assert ours.p_value < 0.05


def test_unpaired_statistics_are_refused():
  a = significance.sentence_stats(_system(0.5, 1), REFERENCES)
  with pytest.raises(ValueError, match='different test sets'):
    significance.paired_bootstrap(a, a[:-1])
