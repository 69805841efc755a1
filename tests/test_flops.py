"""The matmul peak behind the reported MFU, and the FLOP counts."""

import json

import jax
import jax.numpy as jnp

from attention_jax.train import flops


def test_measured_peak_is_a_positive_rate():
  assert flops.measure_matmul_peak(size=64, repeats=3) > 0


def test_host_peak_keeps_the_highest_rate_measured(tmp_path):
  path = str(tmp_path / 'cache' / 'matmul_peak.json')
  assert flops.host_matmul_peak(100e9, path) == 100e9
  # A later measurement slowed by other work does not lower the peak, so
  # MFU is not inflated by it.
  assert flops.host_matmul_peak(8e9, path) == 100e9
  assert flops.host_matmul_peak(120e9, path) == 120e9
  with open(path) as f:
    record = json.load(f)
  (key, value), = record.items()
  assert value == 120e9
  assert jax.local_devices()[0].platform in key


def test_a_measurement_is_recorded_and_the_best_known_returned(
    tmp_path, monkeypatch):
  # What the trainer and the benchmarks call: one measurement, recorded in
  # the host's record, beside the best rate known.
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  rates = iter([90e9, 30e9])
  monkeypatch.setattr(flops, 'measure_matmul_peak', lambda: next(rates))
  assert flops.measure_and_record_peak() == (90e9, 90e9)
  assert flops.measure_and_record_peak() == (30e9, 90e9)
  record = tmp_path / 'attention_jax' / 'matmul_peak.json'
  assert list(json.loads(record.read_text()).values()) == [90e9]


def test_an_unreadable_peak_record_is_replaced(tmp_path):
  path = tmp_path / 'matmul_peak.json'
  path.write_text('{"truncated')
  assert flops.host_matmul_peak(50e9, str(path)) == 50e9
  assert list(json.loads(path.read_text()).values()) == [50e9]


def test_traced_flops_count_each_loop_body_times_its_trip_count():
  x = jnp.ones((16, 16))
  matmul = 2 * 16**3
  ten = lambda x: jax.lax.scan(lambda c, _: (c @ x, None), x, None,
                               length=10)[0]
  assert flops.traced_matmul_flops(ten, x) == 10 * matmul
  # XLA's cost analysis counts the body once: the reason for the jaxpr count.
  compiled = jax.jit(ten).lower(x).compile()
  # (compiled_flops is over all devices, the tests' simulated ones too.)
  assert flops.compiled_flops(compiled) / jax.device_count() < 2 * matmul
  # Reverse mode: each forward matmul has two in the backward pass.
  assert flops.traced_matmul_flops(jax.grad(lambda x: ten(x).sum()),
                                   x) == 30 * matmul
  # Batched einsum, jit, checkpoint; a cond counts its costlier branch.
  batched = jax.jit(jax.checkpoint(
      lambda a: jnp.einsum('bij,bjk->bik', a, a)))
  assert flops.traced_matmul_flops(batched, jnp.ones((3, 16, 16))) == (
      3 * matmul)
  branchy = lambda x: jax.lax.cond(x[0, 0] > 0, lambda: x @ x @ x,
                                   lambda: x @ x)
  assert flops.traced_matmul_flops(branchy, x) == 2 * matmul
  # A depthwise convolution: 2 x outputs x taps.
  conv = lambda y, w: jax.lax.conv_general_dilated(
      y, w, (1,), [(2, 0)], dimension_numbers=('NWC', 'WIO', 'NWC'),
      feature_group_count=8)
  assert flops.traced_matmul_flops(conv, jnp.ones((2, 10, 8)),
                                   jnp.ones((3, 1, 8))) == 2 * 2 * 10 * 8 * 3


def test_traced_flops_are_unknown_for_a_loop_of_run_time_length():
  x = jnp.ones((16, 16))
  loop = lambda x: jax.lax.fori_loop(0, x[0, 0].astype(jnp.int32),
                                     lambda i, c: c @ x, x)
  assert flops.traced_matmul_flops(loop, x) is None
