"""The matmul peak behind the reported MFU, and the FLOP counts."""

import json

import jax
from jax.experimental import pallas as pl
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np

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
  monkeypatch.setattr(flops, 'measure_matmul_peak',
                      lambda dtype: next(rates))
  assert flops.measure_and_record_peak() == (90e9, 90e9)
  assert flops.measure_and_record_peak() == (30e9, 90e9)
  record = tmp_path / 'attention_jax' / 'matmul_peak.json'
  assert list(json.loads(record.read_text()).values()) == [90e9]


def test_peaks_are_kept_per_number_of_usable_cpus(tmp_path, monkeypatch):
  # A process pinned to one core (taskset -c 0) is measured against a
  # one-core peak: a two-core record would halve its reported MFU, and a
  # one-core record would double an unpinned process's.
  path = str(tmp_path / 'matmul_peak.json')
  monkeypatch.setattr(flops.os, 'sched_getaffinity', lambda pid: {0, 1},
                      raising=False)
  assert flops.host_matmul_peak(200e9, path) == 200e9
  monkeypatch.setattr(flops.os, 'sched_getaffinity', lambda pid: {0},
                      raising=False)
  assert flops.usable_cpus() == 1
  assert flops.host_matmul_peak(100e9, path) == 100e9
  with open(path) as f:
    record = json.load(f)
  assert sorted(record.values()) == [100e9, 200e9]
  assert any(key.endswith('|1 cpus') for key in record)


def test_peaks_are_kept_per_dtype(tmp_path):
  # A bfloat16 model's MFU is measured against a bfloat16 matmul: on a GPU
  # a float32 (TF32) peak is about half of it.
  path = str(tmp_path / 'matmul_peak.json')
  assert flops.host_matmul_peak(100e9, path) == 100e9
  assert flops.host_matmul_peak(40e9, path, dtype='bfloat16') == 40e9
  assert flops.host_matmul_peak(30e9, path, dtype='bfloat16') == 40e9
  with open(path) as f:
    record = json.load(f)
  assert sorted(record.values()) == [40e9, 100e9]
  assert flops.measure_matmul_peak(size=64, repeats=2, dtype='bfloat16') > 0


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


def test_a_pallas_kernel_counts_its_body_times_its_grid():
  # The kernel's jaxpr is one grid step: a [16, 32] x [32, 16] block
  # product, run on a grid of 4 x 2 blocks.
  def kernel(a_ref, b_ref, out_ref):
    out_ref[...] = a_ref[...] @ b_ref[...]

  def blocked_matmul(a, b):
    return pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((64, 32), jnp.float32),
        grid=(4, 2),
        in_specs=[pl.BlockSpec((16, 32), lambda i, j: (i, 0)),
                  pl.BlockSpec((32, 16), lambda i, j: (0, j))],
        out_specs=pl.BlockSpec((16, 16), lambda i, j: (i, j)),
        interpret=True)(a, b)

  a, b = jnp.ones((64, 32)), jnp.ones((32, 32))
  assert flops.traced_matmul_flops(blocked_matmul, a, b) == 2 * 64 * 32 * 32
  np.testing.assert_allclose(blocked_matmul(a, b), a @ b)


def test_cudnn_fused_attention_is_counted_from_its_shapes():
  # jax.nn.dot_product_attention(implementation='cudnn') cannot be traced
  # without a GPU: a primitive of the same name and parameters stands in
  # for its custom call, which holds no dot_general to count.
  forward = jax_core.Primitive('dot_product_attention_fwd_wrapper')
  forward.def_abstract_eval(lambda q, k, v, *, layout: q)
  backward = jax_core.Primitive('dot_product_attention_bwd_wrapper')
  backward.def_abstract_eval(lambda q, k, v, *, layout: q)
  batch, q_len, kv_len, heads, kv_heads, depth = 2, 8, 12, 4, 2, 16
  q = jnp.ones((batch, q_len, heads, depth))
  kv = jnp.ones((batch, kv_len, kv_heads, depth))
  # The XLA form's products: QKᵀ and PV, 2·B·N·T·S·d each.
  product = 2 * batch * heads * q_len * kv_len * depth
  assert flops.traced_matmul_flops(
      lambda q, k, v: forward.bind(q, k, v, layout=0), q, kv, kv) == (
          2 * product)
  assert flops.traced_matmul_flops(
      lambda q, k, v: backward.bind(q, k, v, layout=0), q, kv, kv) == (
          4 * product)
  # Heads before length (layout BNTH).
  to_bnth = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731
  assert flops.traced_matmul_flops(
      lambda q, k, v: forward.bind(q, k, v, layout=1),
      to_bnth(q), to_bnth(kv), to_bnth(kv)) == 2 * product
