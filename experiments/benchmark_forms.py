"""The chunked forms of the linear-attention recurrences against their scans.

  python -m experiments.benchmark_forms --json_out=/tmp/forms.json

Times forward+backward (gradients w.r.t. every input) of the causal
recurrences shared by the gated linear / delta-rule mechanisms, without the
layer's projections, on [1, L, 8, 64] float32 queries, keys and values:

  * scalar decay (`retnet`, `mamba2`): `decay_scan.causal_scan` against
    `decay_scan.reference_recurrence`;
  * per-channel decay (`gla`): the same functions with a decay per key
    channel;
  * delta rule (`deltanet`) and gated delta rule (`gated_deltanet`):
    `delta_rule.chunked` (the WY/UT form) against `delta_rule.recurrent`.

The recurrent form is a `lax.scan` over tokens, each step a rank-one state
update; the chunked form does the same work as matmuls. For each it prints
seconds per call (median of --repeats after a warm-up), the call's matmul
FLOPs (`flops.traced_matmul_flops`: every scan body times its length; XLA's
cost analysis counts a loop body once), and the achieved GFLOP/s beside a
float32 matmul peak measured at the start. It runs under glibc's huge pages
as launch.py does (attention_jax/host_memory.py; ATTENTION_JAX_HUGE_PAGES=0
for glibc's defaults): the recurrent scans gain more from them than the
chunked forms. What the whole attention layer costs, projections included,
against softmax attention, is `experiments/benchmark_attention.py --causal`.
"""

# Before jax is imported: the allocator setting launch.py uses. Only when
# run: importing this module must not restart the importing process.
if __name__ == '__main__':
  from attention_jax import host_memory
  host_memory.reexec_with_huge_pages()

# pylint: disable=wrong-import-position
import json
import os
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from attention_jax.attention import decay_scan
from attention_jax.attention import delta_rule
from attention_jax.attention import head_norms
from attention_jax.train import flops

_LENGTHS = flags.DEFINE_list('lengths', ['512', '2048', '8192', '32768'],
                             'Sequence lengths.')
_FORMS = flags.DEFINE_list(
    'forms', ['scalar_decay', 'channel_decay', 'delta', 'gated_delta'],
    'Recurrences to time (see the module docstring).')
_CHUNK_SIZES = flags.DEFINE_list(
    'chunk_sizes', ['scalar_decay=64', 'channel_decay=64', 'delta=32',
                    'gated_delta=32'],
    'Tokens per chunk of each chunked form, as form=size.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls after a warm-up.')
_JSON_OUT = flags.DEFINE_string('json_out', None, 'Where to write the rows.')

_HEADS, _DEPTH = 8, 64


def _inputs(form: str, length: int) -> dict:
  """Random inputs as the mechanisms give them (unit keys for the delta
  rule, decays in (e^-0.1, 1))."""
  keys = jax.random.split(jax.random.key(0), 5)
  shape = (1, length, _HEADS, _DEPTH)
  q, k, v = (jax.random.normal(key, shape) for key in keys[:3])
  channels = _DEPTH if form == 'channel_decay' else 1
  log_decay = -0.1 * jax.random.uniform(keys[3],
                                        (1, length, _HEADS, channels))
  if form in ('delta', 'gated_delta'):
    beta = jax.nn.sigmoid(jax.random.normal(keys[4], shape[:3]))
    log_alpha = (log_decay[..., 0] if form == 'gated_delta'
                 else jnp.zeros(shape[:3]))
    return dict(q=head_norms.l2_normalise(q), k=head_norms.l2_normalise(k),
                v=v, beta=beta, log_alpha=log_alpha)
  return dict(q=q / _DEPTH**0.5, k=k, v=v, log_decay=log_decay)


def _function(form: str, chunked: bool, chunk_size: int):
  """(inputs dict, segment ids) -> outputs [1, L, H, D]."""
  if form in ('delta', 'gated_delta'):
    def delta(x, seg):
      args = (x['q'], x['k'], x['v'], x['beta'], x['log_alpha'], seg)
      if chunked:
        if form == 'delta':  # As `deltanet` calls it: no decay terms.
          args = args[:4] + (None, seg)
        return delta_rule.chunked(*args, chunk_size)[0]
      return delta_rule.recurrent(*args)[0]
    return delta

  def decay(x, seg):
    args = (x['q'], x['k'], x['v'], x['log_decay'], seg)
    if chunked:
      return decay_scan.causal_scan(*args, chunk_size)[0]
    return decay_scan.reference_recurrence(*args)[0]
  return decay


def measure(form: str, chunked: bool, chunk_size: int, length: int) -> dict:
  """Seconds and FLOPs of one forward+backward call."""
  inputs = _inputs(form, length)
  seg = jnp.ones((1, length), jnp.int32)
  f = _function(form, chunked, chunk_size)
  cotangent = jax.random.normal(jax.random.key(1), inputs['v'].shape)
  # Everything is an argument: XLA would fold work on constants at compile
  # time.
  step = jax.jit(jax.grad(lambda x, seg, dy: jnp.sum(f(x, seg) * dy)))
  compiled = step.lower(inputs, seg, cotangent).compile()
  jax.block_until_ready(compiled(inputs, seg, cotangent))
  seconds = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(compiled(inputs, seg, cotangent))
    seconds.append(time.perf_counter() - start)
  # XLA's own count takes each loop body once; the jaxpr's matmuls with
  # every scan times its length are what the chunked forms do.
  gflop = flops.traced_matmul_flops(step, inputs, seg, cotangent)
  return {'form': form, 'computed': 'chunked' if chunked else 'recurrent',
          'chunk_size': chunk_size if chunked else None, 'length': length,
          'seconds': statistics.median(seconds),
          'gflop': None if gflop is None else gflop / 1e9}


def main(argv) -> None:
  del argv
  sizes = dict(item.split('=') for item in _CHUNK_SIZES.value)
  peak, best = (x / 1e9 for x in flops.measure_and_record_peak())
  print(f'Measured float32 matmul peak: {peak:.1f} GFLOP/s (best known on '
        f'this host {best:.1f}); forward+backward, batch 1, {_HEADS} heads '
        f'of {_DEPTH}, float32.')
  print(f"{'form':>14} {'length':>7} {'recurrent s':>12} {'chunked s':>10} "
        f"{'speed-up':>9} {'matmul GFLOP/s':>15}", flush=True)
  rows = []
  for form in _FORMS.value:
    for length in (int(x) for x in _LENGTHS.value):
      scan = measure(form, False, 0, length)
      chunk = measure(form, True, int(sizes[form]), length)
      rate = chunk['gflop'] / chunk['seconds'] if chunk['gflop'] else 0.0
      print(f"{form:>14} {length:>7} {scan['seconds']:>12.4f} "
            f"{chunk['seconds']:>10.4f} "
            f"{scan['seconds'] / chunk['seconds']:>8.1f}x {rate:>15.1f}",
            flush=True)
      rows += [scan, chunk]
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, 'w') as f:
      json.dump({'matmul_peak_gflops': peak,
                 'best_known_matmul_peak_gflops': best, 'heads': _HEADS,
                 'head_dim': _DEPTH, 'batch': 1, 'dtype': 'float32',
                 'repeats': _REPEATS.value,
                 'glibc_tunables': os.environ.get('GLIBC_TUNABLES'),
                 'results': rows}, f, indent=1)


if __name__ == '__main__':
  app.run(main)
