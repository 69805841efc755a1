"""The ETA of long phases (decoding a split, a study's points)."""

import pytest

from attention_jax import progress


def test_eta_is_the_rest_at_the_pace_so_far():
  # 30 of 120 units in 60 s: 2 s a unit, 90 left.
  assert progress.eta_seconds(30, 120, 60.0) == pytest.approx(180.0)
  assert progress.eta_seconds(1, 3, 2000.0) == pytest.approx(4000.0)


def test_eta_is_zero_when_done_and_unknown_before_any_pace():
  assert progress.eta_seconds(120, 120, 60.0) == 0
  assert progress.eta_seconds(130, 120, 60.0) == 0  # Never negative.
  assert progress.eta_seconds(0, 120, 5.0) is None


def test_format_seconds_is_hours_minutes_seconds():
  assert progress.format_seconds(0) == '0:00:00'
  assert progress.format_seconds(3599.9) == '0:59:59'
  assert progress.format_seconds(100 * 3600 + 61) == '100:01:01'
  assert progress.format_seconds(None) == 'unknown'
