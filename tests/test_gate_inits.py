"""The shared decay and gate initialisers (attention/gate_inits.py)."""

import jax
import numpy as np

from attention_jax.attention import gate_inits


def test_inverse_softplus_inverts_softplus_without_overflow():
  y = np.geomspace(1e-6, 100.0, 57).astype(np.float32)
  x = gate_inits.inverse_softplus(y)
  # log(e^y - 1) overflows float32 above y = 88; this form must not.
  assert np.all(np.isfinite(x))
  np.testing.assert_allclose(jax.nn.softplus(x), y, rtol=1e-5)


def test_mamba2_inits_draw_the_papers_ranges():
  key_a, key_dt = jax.random.split(jax.random.key(0))
  a = np.exp(gate_inits.mamba2_a_log(key_a, (4096,)))
  dt = jax.nn.softplus(gate_inits.mamba2_dt_bias(key_dt, (4096,)))
  assert 1.0 <= a.min() and a.max() <= 16.0
  assert 1e-3 * (1 - 1e-5) <= dt.min() and dt.max() <= 0.1 * (1 + 1e-5)
  # A uniform, Δ log-uniform: their medians sit mid-range in A and log Δ.
  np.testing.assert_allclose(np.median(a), 8.5, atol=0.5)
  np.testing.assert_allclose(np.median(np.log(dt)), np.log(1e-2), atol=0.15)
