"""Speed of the training step of a config, on synthetic packed batches.

  python -m experiments.benchmark_step \\
    --config=experiments/configs/wmt14_base.py --steps=30 --json_out=/tmp/step.json
  python -m experiments.benchmark_step --config=experiments/configs/smoke.py \\
    --steps=3
  python -m experiments.benchmark_step --config=experiments/configs/bible.py \\
    --config.batch_size=32 --config.data.max_len=64 --baseline=/path/to/checkout

The model, optimizer, sharded state and jitted step are built with the same
calls as `attention_jax/train/trainer.py`, so the number is what training
would see with the data pipeline keeping up. Batches hold random token ids
packed like `attention_jax/data/packing.py` packs sentence pairs: each row
several pairs with segment ids and per-pair positions, `--fill` of its slots
used. Steps are dispatched back to back and the clock stops when the last
one's state is ready, as in training, where the host never waits for a step.
The process CPU time of the timed steps is reported too: on a machine shared
with other work it is the steadier measure of the work a step does.

With --baseline, this benchmark runs as it is in both checkouts (the config
path, if relative, is read in each checkout, so each reads its own version
of the config), in subprocesses alternating between them, --rounds times
each; it prints the median seconds per step, the whole processes' CPU
seconds (compilation included, which a baseline without the CPU figure
lacks), the final losses and the ratios.
"""

# Before jax is imported: the allocator setting launch.py uses
# (attention_jax/host_memory.py); not in a --baseline comparison's parent,
# and only when run: importing this module must not restart the importer.
if __name__ == '__main__':
  from attention_jax import host_memory
  host_memory.reexec_with_huge_pages(unless_flag='--baseline')

# pylint: disable=wrong-import-position
import collections
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from attention_jax import config_overrides
from attention_jax import sharding
from attention_jax.data import packing
from attention_jax.model import from_config
from attention_jax.train import config_check
from attention_jax.model.transformer import Transformer
from attention_jax.train import flops
from attention_jax.train import optim
from attention_jax.train import profiling
from attention_jax.train import steps
from attention_jax.train import train_state

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file.', lock_config=True
)
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed training steps.')
_WARMUP = flags.DEFINE_integer(
    'warmup', 3, 'Untimed steps after compilation (allocator, clocks).'
)
_FILL = flags.DEFINE_float(
    'fill', 0.95, 'Share of the token slots of each row that hold tokens.'
)
_MEAN_SENTENCE = flags.DEFINE_integer(
    'mean_sentence', 32, 'Mean sentence length in tokens, which sets how '
    'many pairs share a row.'
)
_NUM_BATCHES = flags.DEFINE_integer(
    'num_batches', 4, 'Distinct batches the timed steps cycle through.'
)
_PROFILE_STEPS = flags.DEFINE_integer(
    'profile_steps', 0,
    'After the timed steps, trace this many more with jax.profiler and print '
    'the XLA operations that took the most time per step (where the time '
    'goes: matmul fusions, other fusions, copies).'
)
_JSON_OUT = flags.DEFINE_string(
    'json_out', None, 'Where to write the numbers as JSON.'
)
_BASELINE = flags.DEFINE_string(
    'baseline', None, 'Another checkout of attention_jax to compare with.'
)
_ROUNDS = flags.DEFINE_integer(
    'rounds', 3, 'Alternating runs per checkout with --baseline.'
)

_HOURS_FOR = 100_000
# Ids 0 and 1 are padding and end-of-sentence in our sentencepiece models.
_FIRST_WORD_ID = 2


def synthetic_batch(rng: np.random.Generator, rows: int, max_len: int,
                    vocab_size: int) -> dict[str, np.ndarray]:
  """Random packed rows: same pair count per side, `--fill` of slots used.

  Each side of a row splits its filled slots at random cut points, so pairs
  have random, unequal source and target lengths.
  """
  filled = max(1, round(_FILL.value * max_len))
  per_row = max(1, filled // _MEAN_SENTENCE.value)
  pairs, layout = [], []
  for _ in range(rows):
    sides = []
    for _ in packing.FIELDS:
      cuts = np.sort(rng.choice(np.arange(1, filled), per_row - 1, False))
      lengths = np.diff(np.concatenate([[0], cuts, [filled]]))
      sides.append([rng.integers(_FIRST_WORD_ID, vocab_size, n) for n in lengths])
    layout.append(list(range(len(pairs), len(pairs) + per_row)))
    pairs.extend(zip(*sides))
  return packing.rows_to_batch(pairs, layout, max_len)


def _device_summary() -> str:
  device = jax.devices()[0]
  return f'{jax.device_count()} x {device.device_kind} ({device.platform})'


def _peak_memory_gib() -> float | None:
  """Peak bytes allocated on the first device, where the backend counts them."""
  stats = jax.devices()[0].memory_stats()
  if not stats or 'peak_bytes_in_use' not in stats:
    return None
  return stats['peak_bytes_in_use'] / 2**30


def _step(config, model):
  """The trainer's training step for `model`, to be jitted."""
  return functools.partial(
      steps.train_step, model=model, label_smoothing=config.label_smoothing,
      micro_batches=config.micro_batches,
  )


def _traced_flops(config, cfg, state, batch) -> float | None:
  """FLOPs of one training step as traced, counted by XLA's CPU cost model
  (elementwise work included, each loop body once).

  Reported beside the compiled program's own count (`flops.compiled_flops`),
  which on GPU leaves out most of the work of cuBLAS and cuDNN custom calls
  (for wmt14_base on an H100 it was a sixth of this count), and beside the
  matmul count of the trainer's MFU (`flops.traced_matmul_flops`). The step
  is traced with XLA attention, whose FLOPs a fused kernel does too, and
  lowered for the CPU, whatever the backend.
  """
  step = _step(config, Transformer(cfg.replace(implementation='xla')))
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        (state, batch))
  with jax.default_device(jax.devices('cpu')[0]):
    analysis = jax.jit(step).lower(*shapes).cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  return float(analysis['flops']) if analysis and 'flops' in analysis else None


def _print_profile(compiled, state, batches, num_steps: int,
                   shown: int = 15) -> None:
  """Traces `num_steps` steps and prints the XLA operations that took the
  most time, in ms per step and as a share of all operations' time."""
  with tempfile.TemporaryDirectory() as log_dir:
    with jax.profiler.trace(log_dir):
      for i in range(num_steps):
        state, metrics = compiled(state, batches[i % len(batches)])
      jax.block_until_ready((state, metrics))
    seconds = profiling.xla_op_seconds(log_dir)
  total = sum(seconds.values())
  print(f'XLA operations in {num_steps} traced steps: '
        f'{total / num_steps * 1e3:,.1f} ms per step summed over threads; '
        'the largest:')
  for name, value in list(seconds.items())[:shown]:
    print(f'{name:>40}: {value / num_steps * 1e3:8.1f} ms '
          f'{value / total:6.1%}')
  kinds = collections.Counter()
  for name, value in seconds.items():
    kinds[name.split('.')[0]] += value
  print('By kind: ' + ', '.join(
      f'{kind} {value / total:.1%}' for kind, value in kinds.most_common(8)),
        flush=True)


def measure(config) -> dict:
  """Compiles and times the training step of `config`; returns the numbers."""
  config_check.check_config(config)
  vocab_size, max_len = config.data.vocab_size, config.data.max_len
  cfg = from_config.transformer_config(config, vocab_size)
  model = Transformer(cfg)
  tx, _ = optim.make_optimizer(config)
  mesh = sharding.make_mesh(config.mesh)
  state, state_shardings = train_state.create(
      model, tx, config.seed, mesh, max_len,
      sharding.logical_rules(config.mesh),
  )
  train_fn = jax.jit(
      _step(config, model),
      in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=0,
  )
  rng = np.random.default_rng(config.seed)
  host_batches = [
      synthetic_batch(rng, config.batch_size, max_len, vocab_size)
      for _ in range(_NUM_BATCHES.value)
  ]
  target_tokens = np.mean(
      [(b['targets_segmentation'] > 0).sum() for b in host_batches]
  )
  device_batches = [sharding.to_global(b, mesh) for b in host_batches]

  step_flops = _traced_flops(config, cfg, state, host_batches[0])
  # The trainer's MFU: matmul FLOPs on the jaxpr (fused kernels included)
  # against the measured matmul peak in the model's dtype.
  matmul_flops = flops.traced_matmul_flops(train_fn, state, device_batches[0])
  peak = flops.machine_peak(
      flops.measure_and_record_peak(config.model.dtype)[1])
  start = time.perf_counter()
  compiled = train_fn.lower(state, device_batches[0]).compile()
  compile_seconds = time.perf_counter() - start
  # cuDNN fused attention appears in the compiled step as these custom calls.
  cudnn_attention_calls = compiled.as_text().count('__cudnn$fmha')

  for i in range(_WARMUP.value):
    state, metrics = compiled(state, device_batches[i % len(device_batches)])
  jax.block_until_ready(state)
  start, cpu_start = time.perf_counter(), time.process_time()
  for i in range(_STEPS.value):
    state, metrics = compiled(state, device_batches[i % len(device_batches)])
  jax.block_until_ready((state, metrics))
  seconds_per_step = (time.perf_counter() - start) / _STEPS.value
  cpu_seconds_per_step = (time.process_time() - cpu_start) / _STEPS.value
  loss = float(metrics['loss'])
  if _PROFILE_STEPS.value:
    _print_profile(compiled, state, device_batches, _PROFILE_STEPS.value)

  return {
      'device': _device_summary(),
      'dtype': config.model.dtype,
      'implementation': config.model.implementation,
      'cudnn_attention_calls': cudnn_attention_calls,
      'batch_rows': config.batch_size,
      'max_len': max_len,
      'target_tokens_per_step': float(target_tokens),
      'parameters': int(sum(x.size for x in jax.tree.leaves(state.params))),
      'compile_seconds': compile_seconds,
      'flops_per_step': step_flops,
      'compiled_flops_per_step': flops.compiled_flops(compiled),
      'seconds_per_step': seconds_per_step,
      'cpu_seconds_per_step': cpu_seconds_per_step,
      'target_tokens_per_second': target_tokens / seconds_per_step,
      'tflops_per_second': (
          step_flops / seconds_per_step / 1e12 if step_flops else None
      ),
      'matmul_flops_per_step': matmul_flops,
      'matmul_tflops_per_second': (
          matmul_flops / seconds_per_step / 1e12 if matmul_flops else None),
      'matmul_peak_tflops': peak / 1e12,
      'mfu': matmul_flops / seconds_per_step / peak if matmul_flops else None,
      'steps_per_hour': 3600 / seconds_per_step,
      f'hours_for_{_HOURS_FOR}_steps': _HOURS_FOR * seconds_per_step / 3600,
      'peak_memory_gib': _peak_memory_gib(),
      'final_loss': loss,
      'timed_steps': _STEPS.value,
      'jax_version': jax.__version__,
      'glibc_tunables': os.environ.get('GLIBC_TUNABLES', ''),
  }


def _run_checkout(checkout: str, args: list[str]) -> dict:
  """This benchmark as `checkout` has it, in a subprocess; its numbers and
  the CPU seconds of the whole process."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  with tempfile.NamedTemporaryFile('r', suffix='.json') as out:
    subprocess.run(
        [sys.executable, '-m', 'experiments.benchmark_step', *args,
         f'--json_out={out.name}'],
        cwd=checkout, env=dict(os.environ, PYTHONPATH=checkout), check=True)
    results = json.load(out)
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  results['process_cpu_seconds'] = (after.ru_utime + after.ru_stime
                                    - before.ru_utime - before.ru_stime)
  return results


def compare(args: list[str], baseline: str) -> dict:
  """Medians of alternating runs in this checkout and `baseline`."""
  checkouts = {
      'this': os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      'baseline': os.path.abspath(baseline),
  }
  runs = {label: [] for label in checkouts}
  for _ in range(_ROUNDS.value):
    for label, checkout in checkouts.items():
      runs[label].append(_run_checkout(checkout, args))
  medians = {}
  for label, results in runs.items():
    medians[label] = {
        name: statistics.median(r[name] for r in results)
        for name in ('seconds_per_step', 'process_cpu_seconds',
                     'cpu_seconds_per_step') if name in results[0]
    }
    medians[label]['final_losses'] = [r['final_loss'] for r in results]
    medians[label]['flops_per_step'] = results[0].get('flops_per_step')
    print(f'{label:>9}: {medians[label]["seconds_per_step"]:.4g} s/step, '
          + (f'{medians[label]["cpu_seconds_per_step"]:.4g} CPU-s/step, '
             if 'cpu_seconds_per_step' in medians[label] else '')
          + f'{medians[label]["process_cpu_seconds"]:.1f} process CPU-s, '
          f'{(medians[label]["flops_per_step"] or 0) / 1e9:.1f} GFLOP/step, '
          f'final losses {medians[label]["final_losses"]}', flush=True)
  new, old = medians['this'], medians['baseline']
  medians['speedup_wall'] = old['seconds_per_step'] / new['seconds_per_step']
  medians['speedup_process_cpu'] = (old['process_cpu_seconds'] /
                                    new['process_cpu_seconds'])
  medians['largest_loss_difference'] = max(
      abs(a - b) for a, b in zip(new['final_losses'], old['final_losses']))
  print(f'this / baseline: {medians["speedup_wall"]:.2f}x steps/s, '
        f'{medians["speedup_process_cpu"]:.2f}x process CPU; final losses '
        f'differ by at most {medians["largest_loss_difference"]:.2g}')
  return medians


def main(argv) -> None:
  del argv
  if _CONFIG.value is None:
    raise app.UsageError('--config is required.')
  if _BASELINE.value:
    args = [arg for arg in sys.argv[1:] if not arg.startswith(
        ('--baseline', '--rounds', '--json_out'))]
    results = compare(args, _BASELINE.value)
    if _JSON_OUT.value:
      with open(_JSON_OUT.value, 'w') as f:
        json.dump(results, f, indent=1)
    return
  results = measure(_CONFIG.value)
  for name, value in results.items():
    shown = value
    if isinstance(value, float):
      shown = f'{value:,.0f}' if abs(value) >= 1000 else f'{value:.4g}'
    print(f'{name:>28}: {shown}', flush=True)
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  app.run(main, flags_parser=config_overrides.parse_flags)
