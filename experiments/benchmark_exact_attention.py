"""Forward+backward of exact chunked attention: seconds, GFLOP/s, peak memory.

  python -m experiments.benchmark_exact_attention
  python -m experiments.benchmark_exact_attention \
      --baseline=/path/to/other/checkout --lengths=1024,4096,16384 \
      --once_lengths=65536

Times what `experiments.benchmark_attention` times for its 'forward_backward'
mode: the attention frame with the `chunked` mechanism (projections
included), gradients w.r.t. parameters and inputs of one self-attention call
on [1, length, 512] inputs (8 heads of 64, float32, non-causal unless
--causal), chunk_size 512.

Each measurement runs in its own process, under an address-space limit. With
--baseline the same measurement also runs on the other checkout's code (a
process whose PYTHONPATH and working directory are that checkout), and the
two alternate, process by process, for --rounds rounds, so a load that comes
and goes on the machine falls on both alike; the median of all timed calls
of each is shown, with the old/new ratio. A process compiles the call, runs
it once to warm up and then times --repeats calls. Lengths in
--once_lengths run once, on this checkout only: one timed call, no warm-up.

Peak memory is the process's peak resident set size above its peak after
building the parameters and inputs (before compiling). GFLOP/s counts model
FLOPs, the same for both codes whatever they recompute: the four
projections (x3 for forward and backward) and the two attention matmuls
(x3.5 for forward and backward, as FlashAttention-2 counts them), half of
the attention ones when causal; it is printed beside a float32 matmul peak
measured once at the start.
"""

# Before jax is imported: the allocator setting launch.py uses
# (attention_jax/host_memory.py); not in a --baseline comparison's parent.
# A measuring process imports the checkout it measures (PYTHONPATH); one from
# before that module keeps glibc's defaults, as its launch.py did. Only when
# run: importing this module must not restart the importing process.
if __name__ == '__main__':
  try:
    from attention_jax import host_memory
  except ImportError:
    host_memory = None
  if host_memory:
    host_memory.reexec_with_huge_pages(unless_flag='--baseline')

# pylint: disable=wrong-import-position
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

# In a measurement process these come from the checkout on its PYTHONPATH.
from attention_jax import attention
from attention_jax.attention import frame
from attention_jax.train import flops

_LENGTHS = flags.DEFINE_list('lengths', ['1024', '4096', '16384'],
                             'Sequence lengths timed --repeats times.')
_ONCE_LENGTHS = flags.DEFINE_list(
    'once_lengths', [], 'Sequence lengths run once (no warm-up).')
_BASELINE = flags.DEFINE_string(
    'baseline', None, 'Another checkout of this repository to compare with.')
_CAUSAL = flags.DEFINE_bool('causal', False, 'Time causal self-attention.')
_CHUNK_SIZE = flags.DEFINE_integer('chunk_size', 512,
                                   'options.chunked.chunk_size.')
_ROUNDS = flags.DEFINE_integer(
    'rounds', 2, 'Processes per code and length, alternating between codes.')
_REPEATS = flags.DEFINE_integer('repeats', 2,
                                'Timed calls per process after a warm-up.')
_TIMEOUT = flags.DEFINE_integer('timeout', 3600,
                                'Seconds one measurement process may run.')
_MEMORY_LIMIT_GB = flags.DEFINE_float(
    'memory_limit_gb', 22.0, 'Address-space limit of a measurement process.')
_CHILD_LENGTH = flags.DEFINE_integer(
    'child_length', None, 'Internal: measure this length in this process.')

_BATCH, _HEADS, _HEAD_DIM = 1, 8, 64
_EMB_DIM = _HEADS * _HEAD_DIM


def model_gflop(length: int, causal: bool) -> float:
  """Model GFLOP of one forward+backward call (see the module docstring)."""
  projections = 4 * 2 * _BATCH * length * _EMB_DIM**2
  attention = 4 * _BATCH * _HEADS * length**2 * _HEAD_DIM
  return (3 * projections + 3.5 * attention * (0.5 if causal else 1)) / 1e9


def _peak_rss_mb() -> float:
  # ru_maxrss is in KiB on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child_main(length: int) -> None:
  """Measures one length; prints one JSON line."""
  # Set here rather than in a pre-exec hook: forking a process that runs
  # JAX's threads must not run Python before the exec.
  limit = int(_MEMORY_LIMIT_GB.value * 2**30)
  resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

  config = frame.AttentionConfig(
      mechanism='chunked',
      options=attention.MECHANISMS.options(
          'chunked', {'chunk_size': _CHUNK_SIZE.value}),
      num_heads=_HEADS, head_dim=_HEAD_DIM, dtype=jnp.float32,
      deterministic=True)
  module = frame.MultiHeadAttention(config, causal=_CAUSAL.value,
                                    self_attention=True)
  x = jax.random.normal(jax.random.key(0), (_BATCH, length, _EMB_DIM))
  ids = jnp.ones((_BATCH, length), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(length), (_BATCH, length))
  # Segment ids and positions are arguments, so XLA cannot fold the mask.
  inputs = (ids, ids, positions, positions)
  params = jax.jit(module.init)(jax.random.key(1), x, x, *inputs)
  jax.block_until_ready(params)
  built_rss = _peak_rss_mb()

  def loss(params, x, inputs):
    return module.apply(params, x, x, *inputs).sum()

  step = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(
      params, x, inputs).compile()
  if _REPEATS.value:
    jax.block_until_ready(step(params, x, inputs))
  seconds = []
  for _ in range(max(_REPEATS.value, 1)):
    start = time.perf_counter()
    jax.block_until_ready(step(params, x, inputs))
    seconds.append(time.perf_counter() - start)
  print(json.dumps({'seconds': seconds, 'built_rss_mb': built_rss,
                    'peak_rss_mb': _peak_rss_mb()}))


def _run_child(checkout: str, length: int, repeats: int) -> dict:
  """One measurement process on `checkout`'s code."""
  command = [sys.executable, os.path.abspath(__file__),
             f'--child_length={length}', f'--repeats={repeats}',
             f'--chunk_size={_CHUNK_SIZE.value}', f'--causal={_CAUSAL.value}',
             f'--memory_limit_gb={_MEMORY_LIMIT_GB.value}']
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=checkout)
  try:
    done = subprocess.run(command, capture_output=True, text=True, env=env,
                          cwd=checkout,
                          timeout=_TIMEOUT.value, check=False)
  except subprocess.TimeoutExpired:
    return {'status': 'timeout'}
  if done.returncode != 0:
    last = done.stderr.strip().splitlines()[-1:] or ['(no output)']
    return {'status': f'exit status {done.returncode}: {last[0][:300]}'}
  return {'status': 'ok', **json.loads(done.stdout.strip().splitlines()[-1])}


def _summary(runs) -> dict | None:
  """Median seconds and largest memory of a code's processes at a length."""
  ok = [r for r in runs if r['status'] == 'ok']
  if not ok:
    return None
  return {
      'seconds': statistics.median(s for r in ok for s in r['seconds']),
      'memory_mb': max(r['peak_rss_mb'] - r['built_rss_mb'] for r in ok),
      'peak_rss_mb': max(r['peak_rss_mb'] for r in ok),
  }


def _print_row(length: int, code: str, summary, peak_gflops: float) -> None:
  if summary is None:
    print(f'{length:>7} {code:>4} {"FAILED":>10}', flush=True)
    return
  rate = model_gflop(length, _CAUSAL.value) / summary['seconds']
  print(f"{length:>7} {code:>4} {summary['seconds']:10.3f} {rate:9.1f} "
        f"{100 * rate / peak_gflops:6.1f}% {summary['memory_mb']:10.0f} "
        f"{summary['peak_rss_mb']:10.0f}", flush=True)


def main(argv) -> None:
  del argv
  if _CHILD_LENGTH.value:
    _child_main(_CHILD_LENGTH.value)
    return
  peak_gflops, best = (x / 1e9 for x in flops.measure_and_record_peak())
  print(f'Measured float32 matmul peak: {peak_gflops:.1f} GFLOP/s (best known '
        f'on this host {best:.1f}); '
        f"{'causal' if _CAUSAL.value else 'non-causal'}, "
        f'chunk_size {_CHUNK_SIZE.value}')
  codes = {'new': os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
  if _BASELINE.value:
    codes['old'] = os.path.abspath(_BASELINE.value)
  print(f"{'length':>7} {'code':>4} {'seconds':>10} {'GFLOP/s':>9} "
        f"{'of peak':>7} {'peak MiB':>10} {'RSS MiB':>10}", flush=True)
  plan = ([(int(n), _ROUNDS.value, _REPEATS.value) for n in _LENGTHS.value]
          + [(int(n), 1, 0) for n in _ONCE_LENGTHS.value])
  for length, rounds, repeats in plan:
    timed = codes if repeats else {'new': codes['new']}
    runs = {code: [] for code in timed}
    for _ in range(rounds):
      for code, checkout in timed.items():
        runs[code].append(_run_child(checkout, length, repeats))
    summaries = {code: _summary(r) for code, r in runs.items()}
    for code, summary in summaries.items():
      _print_row(length, code, summary, peak_gflops)
      if summary is None:
        print('       ', [r['status'] for r in runs[code]], flush=True)
    if all(summaries.values()) and len(summaries) == 2:
      old, new = summaries['old'], summaries['new']
      print(f"{length:>7} old/new: time {old['seconds'] / new['seconds']:.2f}x"
            f", peak memory {old['memory_mb'] / new['memory_mb']:.2f}x",
            flush=True)


if __name__ == '__main__':
  app.run(main)
