"""Model FLOPs utilisation: compiled FLOPs per step against a measured peak.

A peak measured while other work shares the machine comes out low, and the
utilisation against it high (a study point started beside a test run once
logged 8.3 GFLOP/s on a CPU that reaches 270, and an MFU of 102%). So the
peak is the fastest of several single calls, and `host_matmul_peak` keeps
the highest rate ever measured for the same device kind on this host, in a
small JSON file under the user's cache directory, per number of CPUs the
process may run on (a study point pinned to one core with `taskset` is
measured against a one-core peak, not the whole machine's). The peak is
measured in the model's compute dtype: a bfloat16 model on a GPU measured
against a float32 (TF32) matmul would report about twice its utilisation.
"""

import json
import math
import os
import socket
import tempfile
import time

from absl import logging
import jax
from jax.extend import core as jax_core
import jax.numpy as jnp


def measure_matmul_peak(size: int = 2048, repeats: int = 10,
                        dtype: str = 'float32') -> float:
  """FLOP/s of a square matmul in `dtype` on this process's first device.

  The fastest of `repeats` timed calls, each waited for: a call that other
  processes slowed down does not lower it. On CPU all of a process's
  simulated devices share the same cores, so the per-process peak is this
  number; on accelerators it is per chip.
  """
  device = jax.local_devices()[0]
  a = jax.device_put(jnp.ones((size, size), jnp.dtype(dtype)), device)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  fastest = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    fastest = min(fastest, time.perf_counter() - start)
  return 2 * size**3 / fastest


def usable_cpus() -> int:
  """CPUs this process may run on: its affinity mask (`taskset -c 0` gives
  1), or the machine's count where the OS has no affinity call."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def _cache_path() -> str:
  root = os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache')
  return os.path.join(root, 'attention_jax', 'matmul_peak.json')


def host_matmul_peak(measured: float, path: str | None = None, *,
                     dtype: str = 'float32') -> float:
  """The highest matmul FLOP/s known for this host's device kind and dtype.

  Args:
    measured: this process's `measure_matmul_peak(dtype=dtype)`.
    path: the record (default: $XDG_CACHE_HOME or ~/.cache, then
      attention_jax/matmul_peak.json); a missing or unreadable one counts
      as empty and is rewritten.
    dtype: the matmul's dtype.

  Returns:
    max(measured, the highest recorded for the same host, platform, device
    kind, number of usable CPUs (`usable_cpus`) and dtype), which is
    recorded.
  """
  path = path or _cache_path()
  device = jax.local_devices()[0]
  key = (f'{socket.gethostname()}|{device.platform}|{device.device_kind}|'
         f'{usable_cpus()} cpus')
  if jnp.dtype(dtype) != jnp.float32:
    # float32 keeps the key of the records written before dtypes were.
    key += f'|{jnp.dtype(dtype).name}'
  try:
    with open(path) as f:
      record = json.load(f)
    if not isinstance(record, dict):
      raise ValueError('not a JSON object')
  except (OSError, ValueError) as e:
    if os.path.exists(path):
      logging.warning('Ignoring the unreadable matmul peak record %s (%s).',
                      path, e)
    record = {}
  best = max(measured, float(record.get(key, 0.0)))
  if best > record.get(key, 0.0):
    record[key] = best
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with tempfile.NamedTemporaryFile(
          'w', dir=os.path.dirname(path), delete=False, suffix='.tmp') as f:
        json.dump(record, f, indent=1)
      os.replace(f.name, path)
    except OSError as e:
      logging.warning('Could not record the matmul peak in %s (%s).', path, e)
  return best


def measure_and_record_peak(dtype: str = 'float32') -> tuple[float, float]:
  """(this process's `measure_matmul_peak` in `dtype`, the best known for
  this host and dtype after recording it: `host_matmul_peak`), both in
  FLOP/s.

  The trainer's MFU (in the model's dtype) and the benchmarks' fractions of
  peak use the best known: a process started while others load the CPU
  measures too low.
  """
  measured = measure_matmul_peak(dtype=dtype)
  return measured, host_matmul_peak(measured, dtype=dtype)


def machine_peak(per_device_peak: float) -> float:
  """Peak FLOP/s of all devices of all processes taking part in the run."""
  if jax.devices()[0].platform == 'cpu':
    return per_device_peak * jax.process_count()
  return per_device_peak * jax.device_count()


def compiled_flops(compiled: jax.stages.Compiled) -> float | None:
  """Total FLOPs of one call of a compiled SPMD program, over all devices."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or 'flops' not in analysis:
    return None
  return float(analysis['flops']) * jax.device_count()


def traced_matmul_flops(fn, *args) -> float | None:
  """Matmul FLOPs of one call of `fn(*args)`, counted on its jaxpr.

  XLA's cost analysis (`compiled_flops`) counts the body of every loop once,
  whatever its trip count (a `lax.scan` of ten 64x64 matmuls: 0.52 MFLOP
  for 5.2), so it undercounts chunk loops, recurrences and micro-batch
  accumulation. This counts 2·M·N·K for every `dot_general` (batch
  dimensions included) and every convolution's multiply-adds, a `lax.scan`
  body times its length, a `lax.cond` as its costliest branch, a Pallas
  kernel's body times its grid, cuDNN's fused attention from its shapes
  (`_fused_attention_flops`), and the insides of jit, checkpoint and
  custom-derivative calls. Elementwise work is not counted (the model FLOPs
  of MFU). XLA's cost analysis on GPU leaves out the cuBLAS and cuDNN custom
  calls; this count sees the program before any backend rewrites it.

  Args:
    fn: the function; traced with `jax.make_jaxpr`, not run.
    *args: its arguments (arrays or `jax.ShapeDtypeStruct`s).

  Returns:
    The FLOPs, or None if `fn` holds a `lax.while_loop` (or a `fori_loop`
    with traced bounds), whose trip count is not known before it runs, or a
    Pallas kernel with a grid of run-time size.
  """
  return _jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def _jaxpr_matmul_flops(jaxpr) -> float | None:
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      # 2 x every lhs dimension x the rhs's free dimensions.
      lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
      (_, rhs_contracting), (_, rhs_batch) = eqn.params['dimension_numbers']
      rhs_free = [size for d, size in enumerate(rhs)
                  if d not in rhs_contracting and d not in rhs_batch]
      total += 2.0 * math.prod(lhs) * math.prod(rhs_free)
    elif name == 'conv_general_dilated':
      # 2 x every output x the kernel's taps and input features per group.
      kernel = eqn.invars[1].aval.shape
      out_feature_axis = eqn.params['dimension_numbers'].rhs_spec[0]
      total += (2.0 * math.prod(eqn.outvars[0].aval.shape)
                * math.prod(kernel) / kernel[out_feature_axis])
    elif name in _FUSED_ATTENTION:
      total += _fused_attention_flops(eqn)
    elif name == 'while':
      return None
    else:
      times = _repeats(eqn)
      inner = [_jaxpr_matmul_flops(sub) for sub in _subjaxprs(eqn)]
      if times is None or any(flops is None for flops in inner):
        return None
      if inner:
        total += times * (max(inner) if name == 'cond' else sum(inner))
  return total


# jax.nn.dot_product_attention(implementation='cudnn'): one custom call per
# direction and no dot_general inside, so its FLOPs come from the shapes.
# The number of [T, S] score-sized products per query head, each counted at
# 2·T·S times its depth: forward QKᵀ (d_qk) and PV (d_v); backward dQ, dK
# (d_qk) and dP, dV (d_v), the model FLOPs without FlashAttention's
# recomputation of the scores.
_FUSED_ATTENTION = {
    'dot_product_attention_fwd': 1, 'dot_product_attention_fwd_wrapper': 1,
    'dot_product_attention_bwd': 2, 'dot_product_attention_bwd_wrapper': 2,
}
# jax._src.cudnn.fused_attention_stablehlo.AttentionLayout.BNTH.
_LAYOUT_BNTH = 1


def _fused_attention_flops(eqn) -> float:
  """FLOPs of a cuDNN fused attention call from its query, key and value
  shapes ([B, T, N, d] or, in layout BNTH, [B, N, T, d]), every query
  against every key as XLA's form computes them (a causal kernel skips
  about half: MFU then reads low by as much, like for the XLA form)."""
  query, key, value = (v.aval.shape for v in eqn.invars[:3])
  if eqn.params.get('layout') == _LAYOUT_BNTH:
    (batch, heads, q_len, d_qk), kv_len = query, key[2]
  else:
    (batch, q_len, heads, d_qk), kv_len = query, key[1]
  d_v = value[-1]
  return (_FUSED_ATTENTION[eqn.primitive.name] * 2.0 * batch * heads * q_len
          * kv_len * (d_qk + d_v))


def _repeats(eqn) -> int | None:
  """How many times an equation runs the jaxprs it calls: a scan its length,
  a Pallas kernel (whose jaxpr is one grid step) its grid's size, None for a
  grid sized at run time; anything else once."""
  name = eqn.primitive.name
  if name == 'scan':
    return eqn.params['length']
  if name == 'pallas_call':
    grid = eqn.params['grid_mapping'].grid
    if not all(isinstance(size, int) for size in grid):
      return None
    return math.prod(grid)
  return 1


def _subjaxprs(eqn):
  """The jaxprs an equation calls (scan and cond bodies, jit, checkpoint,
  custom derivatives)."""
  for value in eqn.params.values():
    for item in value if isinstance(value, (list, tuple)) else (value,):
      if isinstance(item, jax_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jax_core.Jaxpr):
        yield item
