"""Model FLOPs utilisation: compiled FLOPs per step against a measured peak."""

import time

import jax
import jax.numpy as jnp


def measure_matmul_peak(size: int = 2048, repeats: int = 10) -> float:
  """FLOP/s of a float32 square matmul on this process's first device.

  On CPU all of a process's simulated devices share the same cores, so the
  per-process peak is this number; on accelerators it is per chip.
  """
  device = jax.local_devices()[0]
  a = jax.device_put(jnp.ones((size, size), jnp.float32), device)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    out = matmul(a)
  out.block_until_ready()
  return 2 * size**3 * repeats / (time.perf_counter() - start)


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
