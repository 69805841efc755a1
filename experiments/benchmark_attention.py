"""Time and peak memory of one attention call, per registered variant.

  python -m experiments.benchmark_attention --json_out=/tmp/attention.json
  python -m experiments.benchmark_attention --lengths=128 --variants=chunked
  python -m experiments.benchmark_attention --causal --modes=forward_backward \
      --variants=gla:chunk_size=64,gla:form=recurrent,softmax,chunked

A variant is a registered name, optionally with option overrides after
colons (`gla:chunk_size=64:form=recurrent`), so forms and sizes of one
mechanism can be timed side by side.

Each (variant, length, mode) is measured in its own process, so one variant's
memory never counts against another and a failure cannot take the sweep
down. A process builds the attention frame with the variant (what the
Transformer runs: projections included),
compiles one self-attention call on [1, length, 512] inputs (8 heads of 64,
float32; non-causal, except for mechanisms defined only as causal
self-attention) and times it. Its peak memory is its peak resident set
size minus that of an identical process that only imports and builds
parameters and inputs. Each process runs under an address-space limit, so a
call that needs more memory than the machine has fails cleanly and is
reported as 'oom' instead of swapping; one that runs past --timeout is
reported as 'timeout'.

Each timed call also reports its matmul FLOPs (`flops.traced_matmul_flops`:
scan bodies times their trip count; XLA's cost analysis, which counts a loop
body once, only where a loop's trip count is known at run time alone, and
the row says which) and the achieved GFLOP/s, beside a float32 matmul peak
measured once at the start. Like launch.py it runs under glibc's huge pages
(attention_jax/host_memory.py; ATTENTION_JAX_HUGE_PAGES=0 for glibc's
defaults), and every row records the GLIBC_TUNABLES it ran under.

Mode 'decode' times incremental decoding instead: the causal
self-attention layer with a cache of `length` tokens generates `length`
tokens one call at a time, and the seconds per token are reported near
token 64 (tokens 33-64) and near the last (the final 32), to show whether a
token's cost grows with the tokens before it.

It also reports each mechanism's decoding cache in bytes per layer: the part
that grows with every decoded token (keys and values, or what replaces them)
and the part of constant size (a recurrent state), from the shapes of the
frame's 'cache' collection (`jax.eval_shape`, nothing computed) in causal
self-attention, or in cross-attention for mechanisms that cannot be causal.

With --json_out naming an existing file, the measured variants' rows replace
theirs in it and the other rows stay, so new mechanisms can be added to a
shipped sweep.
"""

# Before jax is imported: the allocator setting launch.py uses. Only when
# run: importing this module must not restart the importing process.
if __name__ == '__main__':
  from attention_jax import host_memory
  host_memory.reexec_with_huge_pages()

# pylint: disable=wrong-import-position
import dataclasses
import functools
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from attention_jax import attention
from attention_jax.attention import frame
from attention_jax.train import flops

_LENGTHS = flags.DEFINE_list(
    'lengths', ['1024', '4096', '16384'], 'Sequence lengths.'
)
_VARIANTS = flags.DEFINE_list(
    'variants', [], 'Registered attention names; empty means all of them.'
)
_MODES = flags.DEFINE_list(
    'modes', ['forward', 'forward_backward'],
    'forward: the call; forward_backward: gradients w.r.t. parameters and '
    'inputs; decode: seconds per generated token (see the docstring).',
)
_CAUSAL = flags.DEFINE_bool(
    'causal', False,
    'Time causal self-attention for every variant (those that have no '
    'causal form are skipped); by default calls are non-causal except for '
    'mechanisms defined only as causal.')
_TIMEOUT = flags.DEFINE_integer(
    'timeout', 900, 'Seconds one measurement process may run.'
)
_MEMORY_LIMIT_GB = flags.DEFINE_float(
    'memory_limit_gb', 22.0, 'Address-space limit of a measurement process.'
)
_REPEATS = flags.DEFINE_integer(
    'repeats', 3, 'Timed calls after one warm-up call; the median is shown.'
)
_CHUNK_SIZE = flags.DEFINE_integer(
    'chunk_size', None,
    'options.<name>.chunk_size of every mechanism that has it; unset: each '
    "mechanism's own default (512 for `chunked`, 64 for the decaying-state "
    'mechanisms, 32 for the delta rule). Per variant: `name:chunk_size=N`.')
_WINDOW_SIZE = flags.DEFINE_integer(
    'window_size', None,
    'options.<name>.window_size of every mechanism that has it; unset: '
    "each mechanism's own default.")
_JSON_OUT = flags.DEFINE_string(
    'json_out', None, 'Where to write all results as JSON.'
)
_CHILD = flags.DEFINE_enum(
    'child', None, ['measure', 'baseline'],
    'Internal: run as the measurement process of one variant, length and '
    'mode, or as the baseline process that stops after building inputs.',
)

_BATCH, _HEADS, _HEAD_DIM = 1, 8, 64
_EMB_DIM = _HEADS * _HEAD_DIM


def parse_variant(variant: str) -> tuple[str, dict]:
  """'name:field=value:...' -> (name, {field: value}), values typed as the
  mechanism's option fields.

  Raises:
    ValueError: for an unknown field or a value of the wrong type.
  """
  name, *assignments = variant.split(':')
  fields = {f.name: f for f in dataclasses.fields(attention.get(name).Options)}
  options = {}
  for assignment in assignments:
    field, _, value = assignment.partition('=')
    if field not in fields:
      raise ValueError(
          f'{variant!r}: {name!r} has no option {field!r}; its options are '
          f'{", ".join(fields) or "none"}.')
    kind = type(fields[field].default)
    options[field] = (value.lower() in ('1', 'true') if kind is bool
                      else kind(value))
  return name, options


def _config(variant: str, **changes) -> frame.AttentionConfig:
  name, overrides = parse_variant(variant)
  sizes = {flag.name: flag.value for flag in (_CHUNK_SIZE, _WINDOW_SIZE)
           if flag.value is not None}
  fields = {f.name for f in dataclasses.fields(attention.get(name).Options)}
  options = {k: v for k, v in sizes.items() if k in fields} | overrides
  return frame.AttentionConfig(
      mechanism=name,
      options=attention.MECHANISMS.options(name, options),
      num_heads=_HEADS, head_dim=_HEAD_DIM, dtype=jnp.float32,
      deterministic=True, **changes,
  )


def measured_causal(variant: str) -> bool:
  """Whether the timed call is causal: with --causal, or for causal-only
  mechanisms."""
  caps = attention.get(parse_variant(variant)[0]).capabilities
  return _CAUSAL.value or not caps.bidirectional


def decoding_cache_bytes(variant: str) -> dict:
  """Bytes of one layer's decoding cache per row: {'per_token', 'constant'}.

  From the cache's shapes at two decode (or memory) lengths: what grows
  with the length is per token, the rest is constant.
  """
  caps = attention.get(variant).capabilities
  module = frame.MultiHeadAttention(
      _config(variant, decode=True), causal=caps.causal,
      self_attention=caps.causal)

  def total(length: int) -> int:
    x = jax.ShapeDtypeStruct((1, length, _EMB_DIM), jnp.float32)
    ids = jax.ShapeDtypeStruct((1, length), jnp.int32)
    variables = jax.eval_shape(
        lambda x, ids: module.init(jax.random.key(0), x, x, ids, ids), x,
        ids)
    # Cross-attention keeps its projected memory in a collection of its own.
    cache = [variables.get(name, {}) for name in ('cache', frame.MEMORY)]
    return sum(leaf.size * leaf.dtype.itemsize
               for leaf in jax.tree.leaves(cache))

  short, long = total(64), total(128)
  per_token = (long - short) // 64
  return {'per_token': per_token, 'constant': short - 64 * per_token}


def _build(variant: str, length: int):
  """The module, its parameters and the inputs of one measurement."""
  module = frame.MultiHeadAttention(_config(variant),
                                    causal=measured_causal(variant),
                                    self_attention=True)
  x = jax.random.normal(jax.random.key(0), (_BATCH, length, _EMB_DIM))
  segment_ids = jnp.ones((_BATCH, length), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(length), (_BATCH, length))
  inputs = (segment_ids, segment_ids, positions, positions)
  # Under jit only the parameters are computed; the attention call that
  # init traces is dead code.
  params = jax.jit(module.init)(jax.random.key(1), x, x, *inputs)
  jax.block_until_ready(params)
  return module, params, x, inputs


def _decode_seconds_per_token(variant: str, length: int) -> dict:
  """Seconds per generated token near token 64 and near token `length`."""
  module = frame.MultiHeadAttention(_config(variant, decode=True),
                                    causal=True, self_attention=True)
  x = jax.random.normal(jax.random.key(0), (_BATCH, length, _EMB_DIM))
  ids = jnp.ones((_BATCH, length), jnp.int32)
  variables = jax.jit(module.init)(jax.random.key(1), x, x, ids, ids)

  @functools.partial(jax.jit, donate_argnums=0)
  def step(variables, x_t, ids_t):
    out, cache = module.apply(variables, x_t, x_t, ids_t, ids_t,
                              mutable=['cache'])
    return {**variables, **cache}, out

  seconds = []
  for t in range(length):
    start = time.perf_counter()
    variables, out = step(variables, x[:, t:t + 1], ids[:, :1])
    jax.block_until_ready(out)
    seconds.append(time.perf_counter() - start)
  window = min(32, length // 2)
  return {'seconds_per_token_at_64': statistics.mean(
              seconds[max(64 - window, 1):64]),
          'seconds_per_token_at_end': statistics.mean(seconds[-window:]),
          'tokens': length}


def _child_main(kind: str) -> None:
  """Measures one (variant, length, mode); prints one JSON line."""
  (variant,), (length,), (mode,) = _VARIANTS.value, _LENGTHS.value, _MODES.value
  if mode == 'decode':
    print(json.dumps({} if kind == 'baseline'
                     else _decode_seconds_per_token(variant, int(length))))
    return
  module, params, x, inputs = _build(variant, int(length))
  if kind == 'baseline':
    print(json.dumps({}))
    return

  # Segment ids and positions are arguments too: XLA would fold the masks
  # made from constants at compile time.
  def forward(params, x, inputs):
    return module.apply(params, x, x, *inputs)

  if mode == 'forward':
    step = jax.jit(forward)
  else:
    step = jax.jit(jax.grad(lambda p, x, inputs: forward(p, x, inputs).sum(),
                            argnums=(0, 1)))
  compiled = step.lower(params, x, inputs).compile()
  analysis = compiled.memory_analysis()
  jax.block_until_ready(compiled(params, x, inputs))
  seconds = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, x, inputs))
    seconds.append(time.perf_counter() - start)
  # Matmul FLOPs from the jaxpr, loops times their trip counts; XLA's count
  # (each loop body once) where a loop's trip count is only known at run
  # time (`flops.traced_matmul_flops`).
  gflop = flops.traced_matmul_flops(step, params, x, inputs)
  counted = 'jaxpr matmuls'
  if gflop is None:
    gflop, counted = flops.compiled_flops(compiled), 'xla, loops once'
  print(json.dumps({
      'seconds': statistics.median(seconds),
      'gflop': None if gflop is None else gflop / 1e9,
      'flops_counted': counted,
      'xla_temp_mb': None if analysis is None
                     else analysis.temp_size_in_bytes / 2**20,
  }))


def _limit_memory() -> None:
  limit = int(_MEMORY_LIMIT_GB.value * 2**30)
  resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


# Text by which XLA, its CPU matmul library YNNPACK ('allocate of <n>
# failed') or Python report an allocation that failed.
_OOM_SIGNS = ('RESOURCE_EXHAUSTED', 'bad_alloc', 'MemoryError',
              'Out of memory', 'out of memory', 'Cannot allocate memory',
              'allocate of')


def _run_child(kind: str, variant: str, length: int, mode: str) -> dict:
  """Runs one measurement process; returns its status, output and peak RSS."""
  command = [
      sys.executable, '-m', 'experiments.benchmark_attention',
      f'--child={kind}',
      f'--variants={variant}', f'--lengths={length}', f'--modes={mode}',
      f'--repeats={_REPEATS.value}', f'--causal={_CAUSAL.value}',
  ] + [f'--{flag.name}={flag.value}' for flag in (_CHUNK_SIZE, _WINDOW_SIZE)
       if flag.value is not None]
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  result = {'variant': variant, 'length': length, 'mode': mode,
            'options': dataclasses.asdict(_config(variant).options)}
  with tempfile.TemporaryFile('w+') as out, tempfile.TemporaryFile('w+') as err:
    process = subprocess.Popen(command, stdout=out, stderr=err, env=env,
                               cwd=repo, preexec_fn=_limit_memory)
    status, usage = _wait_with_usage(process, _TIMEOUT.value)
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read(), err.read()
  # ru_maxrss is in KiB on Linux.
  result['peak_rss_mb'] = usage.ru_maxrss / 1024
  if status is None:
    return {**result, 'status': 'timeout'}
  if status != 0:
    # SIGKILL without a timeout comes from the kernel's out-of-memory killer.
    if status == -signal.SIGKILL or any(s in stderr for s in _OOM_SIGNS):
      return {**result, 'status': 'oom'}
    last = stderr.strip().splitlines()[-1:] or ['(no output)']
    return {**result, 'status': 'error',
            'error': f'exit status {status}: {last[0][:300]}'}
  return {**result, 'status': 'ok',
          **json.loads(stdout.strip().splitlines()[-1])}


def _wait_with_usage(process, timeout: float):
  """Waits for the process itself (wait4), to get its own resource usage.

  Returns:
    (exit status, negative signal number if killed, None on timeout;
    resource usage of that process alone).
  """
  deadline = time.monotonic() + timeout
  timed_out = False
  while True:
    pid, wait_status, usage = os.wait4(process.pid, os.WNOHANG)
    if pid:
      break
    if time.monotonic() > deadline and not timed_out:
      timed_out = True
      process.kill()
    time.sleep(0.2)
  process.returncode = os.waitstatus_to_exitcode(wait_status)
  return (None if timed_out else process.returncode), usage


def _measure_all(variants, lengths, modes):
  """All measurements, each with the baseline of its variant and length."""
  results = []
  for variant in variants:
    for length in lengths:
      baseline = _run_child('baseline', variant, length, modes[0])
      for mode in modes:
        result = _run_child('measure', variant, length, mode)
        result['baseline_rss_mb'] = baseline['peak_rss_mb']
        if result['status'] == 'ok' and baseline['status'] == 'ok':
          result['memory_mb'] = (
              result['peak_rss_mb'] - baseline['peak_rss_mb']
          )
        _print_row(result)
        results.append(result)
  return results


def _print_row(result) -> None:
  if result['status'] == 'ok' and result['mode'] == 'decode':
    cells = (f"{result['seconds_per_token_at_64']:10.5f} s/token at 64, "
             f"{result['seconds_per_token_at_end']:.5f} at "
             f"{result['tokens']}",)
  elif result['status'] == 'ok':
    rate = (result['gflop'] / result['seconds'] if result.get('gflop')
            else float('nan'))
    cells = (f"{result['seconds']:10.4f}",
             f"{result.get('memory_mb', 0):12.1f}",
             f"{result['xla_temp_mb'] or 0:12.1f}", f"{rate:10.1f}")
  else:
    cells = (f"{result['status'].upper():>10}",)
  print(f"{result['variant']:>28} {result['length']:>7} {result['mode']:>16} "
        + ' '.join(cells), flush=True)


def main(argv) -> None:
  del argv
  if _CHILD.value:
    _child_main(_CHILD.value)
    return
  variants = _VARIANTS.value or attention.names()
  for variant in variants:
    parse_variant(variant)  # Refuses a misspelt option before any timing.
  if _CAUSAL.value:
    variants = [v for v in variants
                if attention.get(parse_variant(v)[0]).capabilities.causal]
  lengths = [int(length) for length in _LENGTHS.value]
  timed = set(_MODES.value) - {'decode'}
  peak = None
  if timed:
    peak, best = flops.measure_and_record_peak()
    print(f'Measured float32 matmul peak: {peak / 1e9:.1f} GFLOP/s (best '
          f'known on this host {best / 1e9:.1f})')
  # Shapes only, so every registered mechanism's cache, whatever is timed.
  caches = {name: decoding_cache_bytes(name) for name in attention.names()}
  print('Decoding cache of one layer, bytes per row (width 512, 8 heads):')
  print(f"{'variant':>16} {'per token':>10} {'constant':>10}")
  for variant, cache in caches.items():
    print(f"{variant:>16} {cache['per_token']:>10,} {cache['constant']:>10,}")
  print(f"{'variant':>28} {'length':>7} {'mode':>16} {'seconds':>10} "
        f"{'peak MiB':>12} {'XLA temp MiB':>12} {'GFLOP/s':>10}", flush=True)
  results = _measure_all(variants, lengths, _MODES.value)
  for result in results:
    result['causal'] = measured_causal(result['variant'])
    # Rows of several runs share a file: each says which allocator it had.
    result['glibc_tunables'] = os.environ.get('GLIBC_TUNABLES')
  if _JSON_OUT.value:
    if os.path.exists(_JSON_OUT.value):
      with open(_JSON_OUT.value) as f:
        old = json.load(f)
      results = [r for r in old['results'] if r['variant'] not in variants
                 ] + results
    with open(_JSON_OUT.value, 'w') as f:
      json.dump({
          'setup': {
              'batch': _BATCH, 'heads': _HEADS, 'head_dim': _HEAD_DIM,
              'dtype': 'float32',
              'causal': (True if _CAUSAL.value else
                         'only for mechanisms defined only as causal'),
              'matmul_peak_gflops': peak and peak / 1e9,
              'chunk_size': _CHUNK_SIZE.value,
              'window_size': _WINDOW_SIZE.value,
              'memory_limit_gb': _MEMORY_LIMIT_GB.value,
              'timeout_s': _TIMEOUT.value, 'repeats': _REPEATS.value,
              'cpus': os.cpu_count(), 'platform': sys.platform,
          },
          'results': results,
          'decoding_cache_bytes': caches,
      }, f, indent=1)


if __name__ == '__main__':
  app.run(main)
