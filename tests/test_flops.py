"""The matmul peak behind the reported MFU."""

import json

import jax

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


def test_an_unreadable_peak_record_is_replaced(tmp_path):
  path = tmp_path / 'matmul_peak.json'
  path.write_text('{"truncated')
  assert flops.host_matmul_peak(50e9, str(path)) == 50e9
  assert list(json.loads(path.read_text()).values()) == [50e9]
