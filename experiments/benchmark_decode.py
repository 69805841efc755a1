"""Speed of beam-search translation: output tokens per second.

  python -m experiments.benchmark_decode
  python -m experiments.benchmark_decode --baseline=/path/to/other/checkout
  python -m experiments.benchmark_decode \\
    --config=experiments/configs/bible.py --max_sentences=256 \\
    --baseline=/path/to/other/checkout

Without --config the workload is the Flax WMT example's model (vocabulary
8,000, width 256, 4 heads, 3+3 layers, MLP 1,024, float32) translating
--batch random source rows of --source_len tokens with beam --beam for
--steps output tokens. With --config it is that config's model sizes and
`eval` settings (beam, length penalty, decode length and batch) translating
the test split of its corpus (the first --max_sentences sentences). Either
way the mechanism is exact softmax attention unless --attention names
another (with its default options), e.g. a chapter-length decode with a
windowed cache:
  python -m experiments.benchmark_decode --attention=local --batch=8 \
    --beam=2 --source_len=1024 --steps=1024

Parameters are the model's initialisation from seed 0, so translations are not
meaningful, but the search runs the same steps as with trained ones and two
checkouts produce comparable, hashable outputs.

With --baseline the same workload runs, in subprocesses that alternate
between this checkout and the baseline's (--rounds each), the baseline's code
being imported from its directory; the figures are medians over rounds, and
the report says whether the translations of both are identical. Only
`translator.predict`, `Transformer` and `TransformerConfig` of a checkout
are used, which have kept their signatures since commit 4294743.

Process CPU seconds are reported beside wall-clock seconds: on a machine
shared with other work the first is the steadier measure of work done.
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
import hashlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import sentencepiece as spm

# In a worker process these come from the checkout being timed, which
# PYTHONPATH names.
from attention_jax.data import batches
from attention_jax.data import corpora
from attention_jax.data import input_pipeline
from attention_jax.decode import translator
from attention_jax.model.config import TransformerConfig
from attention_jax.model.transformer import Transformer

_CONFIG = flags.DEFINE_string(
    'config', None, 'Config file whose model, eval settings and test split '
    'to use; none: the synthetic WMT-example workload.')
_MAX_SENTENCES = flags.DEFINE_integer(
    'max_sentences', 256, 'Test sentences translated with --config (0: all).')
_BATCH = flags.DEFINE_integer('batch', 16, 'Source rows (synthetic workload).')
_BEAM = flags.DEFINE_integer('beam', 4, 'Beam size (synthetic workload).')
_SOURCE_LEN = flags.DEFINE_integer(
    'source_len', 64, 'Source tokens per row (synthetic workload).')
_STEPS = flags.DEFINE_integer(
    'steps', 64, 'Output tokens per hypothesis (synthetic workload).')
_ATTENTION = flags.DEFINE_string(
    'attention', None, 'Registry name of the mechanism used everywhere, with '
    'its default options (none: the model default, exact softmax '
    'attention). A --baseline checkout must know the name.')
_REPEATS = flags.DEFINE_integer(
    'repeats', 3, 'Timed passes over the workload per process, after one '
    'untimed pass that compiles.')
_ROUNDS = flags.DEFINE_integer(
    'rounds', 3, 'Alternating processes per checkout with --baseline.')
_BASELINE = flags.DEFINE_string(
    'baseline', None, 'Another checkout of attention_jax to compare with.')
_JSON_OUT = flags.DEFINE_string('json_out', None, 'Where to write results.')
_WORKLOAD = flags.DEFINE_string(
    'workload', None, 'Internal: a workload file to time in this process.')

# The Flax WMT example's model, scaled as in the measurements.
_WMT_MODEL = dict(emb_dim=256, num_heads=4, num_encoder_layers=3,
                  num_decoder_layers=3, qkv_dim=256, mlp_dim=1024)
_VOCAB_SIZE = 8000
_EOS_ID = 1


def _synthetic_workload() -> dict:
  """Random full-length sources for the WMT example's model."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(2, _VOCAB_SIZE, (_BATCH.value, _SOURCE_LEN.value),
                        dtype=np.int32)
  tokens[:, -1] = _EOS_ID
  return dict(model=dict(_WMT_MODEL), vocab_size=_VOCAB_SIZE,
              max_len=max(_SOURCE_LEN.value, _STEPS.value),
              beam_size=_BEAM.value, alpha=0.6,
              max_decode_len=_STEPS.value, batches=[tokens])


def _config_workload(path: str) -> dict:
  """The test split of a config's corpus, batched as the translator does."""
  config = _load_config(path)
  data_dir = os.path.expanduser(config.data.data_dir)
  test = corpora.get(config.data).read(config.data, 'test', data_dir)
  if _MAX_SENTENCES.value:
    test = test[:_MAX_SENTENCES.value]
  vocab = os.path.join(data_dir, 'vocab', f'{corpora.vocab_key(config.data)}'
                       f'_{config.data.vocab_size}.model')
  sp = spm.SentencePieceProcessor(model_file=vocab)
  sources = input_pipeline.encode(sp, [record[0] for record in test])
  max_len = max(config.data.max_len, config.eval.max_decode_len)
  return dict(
      model={name: config.model[name] for name in _WMT_MODEL},
      vocab_size=sp.vocab_size(), max_len=max_len,
      beam_size=config.eval.beam_size, alpha=config.eval.length_penalty,
      max_decode_len=config.eval.max_decode_len,
      batches=[tokens for _, tokens in batches.source_batches(
          sources, config.eval.decode_batch_size, max_len)])


def _load_config(path: str):
  """`get_config` of 'file.py[:preset]', read from this process's cwd."""
  module_path, _, arg = path.partition(':')
  spec = importlib.util.spec_from_file_location('benchmarked_config',
                                                module_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def _time_workload(workload_path: str) -> dict:
  """Translates the workload; times passes after one that compiles."""
  with open(workload_path) as f:
    workload = json.load(f)
  token_batches = [np.asarray(b, np.int32) for b in workload['batches']]
  cfg = TransformerConfig(vocab_size=workload['vocab_size'],
                          max_len=workload['max_len'], **workload['model'])
  dummy = jnp.zeros((1, workload['max_len']), jnp.int32)
  params = Transformer(cfg).init(jax.random.key(0), dummy, dummy)['params']
  predict = jax.jit(lambda params, inputs: translator.predict(
      params, inputs, cfg=cfg, beam_size=workload['beam_size'],
      alpha=workload['alpha'], max_decode_len=workload['max_decode_len']))

  def one_pass():
    return [np.asarray(predict(params, tokens)) for tokens in token_batches]

  start = time.perf_counter()
  outputs = one_pass()
  first_pass_seconds = time.perf_counter() - start
  walls, cpus = [], []
  for _ in range(_REPEATS.value):
    wall, cpu = time.perf_counter(), time.process_time()
    one_pass()
    walls.append(time.perf_counter() - wall)
    cpus.append(time.process_time() - cpu)
  # Output tokens: those of the best hypotheses up to and including EOS.
  tokens = 0
  for best in outputs:
    ends = np.where((best == _EOS_ID).any(1), (best == _EOS_ID).argmax(1) + 1,
                    best.shape[1])
    tokens += int(ends.sum())
  digest = hashlib.sha256()
  for best in outputs:
    digest.update(np.ascontiguousarray(best, np.int32).tobytes())
  seconds, cpu_seconds = statistics.median(walls), statistics.median(cpus)
  return {
      'output_tokens': tokens,
      'seconds': seconds,
      'cpu_seconds': cpu_seconds,
      'tokens_per_second': tokens / seconds,
      'tokens_per_cpu_second': tokens / cpu_seconds,
      'first_pass_seconds': first_pass_seconds,
      'translations_sha256': digest.hexdigest()[:16],
      'glibc_tunables': os.environ.get('GLIBC_TUNABLES', ''),
  }


def _run_checkout(checkout: str, workload_path: str) -> dict:
  """Times the workload in a fresh process importing `checkout`'s code."""
  env = dict(os.environ, PYTHONPATH=checkout)
  with tempfile.NamedTemporaryFile('r', suffix='.json') as out:
    subprocess.run(
        [sys.executable, os.path.abspath(__file__),
         f'--workload={workload_path}', f'--repeats={_REPEATS.value}',
         f'--json_out={out.name}'],
        cwd=checkout, env=env, check=True)
    return json.load(out)


def _print(label: str, result: dict) -> None:
  print(f'{label:>9}: {result["tokens_per_second"]:9,.0f} tokens/s  '
        f'{result["tokens_per_cpu_second"]:9,.0f} tokens/CPU-s  '
        f'({result["output_tokens"]} tokens, {result["seconds"]:.3f} s, '
        f'{result["cpu_seconds"]:.3f} CPU-s; translations '
        f'{result["translations_sha256"]})', flush=True)


def _median_result(results: list[dict]) -> dict:
  merged = dict(results[0])
  for key in ('seconds', 'cpu_seconds'):
    merged[key] = statistics.median(r[key] for r in results)
  merged['tokens_per_second'] = merged['output_tokens'] / merged['seconds']
  merged['tokens_per_cpu_second'] = (merged['output_tokens'] /
                                     merged['cpu_seconds'])
  return merged


def main(argv) -> None:
  del argv
  if _WORKLOAD.value:
    results = _time_workload(_WORKLOAD.value)
  else:
    workload = (_config_workload(_CONFIG.value) if _CONFIG.value
                else _synthetic_workload())
    workload['batches'] = [b.tolist() for b in workload['batches']]
    if _ATTENTION.value:
      workload['model']['attention'] = _ATTENTION.value
    print(f'workload: {workload["model"].get("attention", "softmax")} '
          f'attention, {sum(len(b) for b in workload["batches"])} sources in '
          f'{len(workload["batches"])} batches of up to '
          f'{max(len(row) for b in workload["batches"] for row in b)} '
          f'tokens, beam {workload["beam_size"]}, up to '
          f'{workload["max_decode_len"]} output tokens each')
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    checkouts = {'this': here}
    if _BASELINE.value:
      checkouts['baseline'] = os.path.abspath(_BASELINE.value)
    with tempfile.NamedTemporaryFile('w', suffix='.json') as f:
      json.dump(workload, f)
      f.flush()
      runs = {label: [] for label in checkouts}
      for _ in range(_ROUNDS.value if _BASELINE.value else 1):
        for label, checkout in checkouts.items():
          runs[label].append(_run_checkout(checkout, f.name))
          _print(label, runs[label][-1])
    results = {label: _median_result(r) for label, r in runs.items()}
    print('medians:')
    for label, result in results.items():
      _print(label, result)
    if _BASELINE.value:
      new, old = results['this'], results['baseline']
      results['speedup_wall'] = (new['tokens_per_second'] /
                                 old['tokens_per_second'])
      results['speedup_cpu'] = (new['tokens_per_cpu_second'] /
                                old['tokens_per_cpu_second'])
      results['identical_translations'] = (
          new['translations_sha256'] == old['translations_sha256'])
      print(f'this / baseline: {results["speedup_wall"]:.2f}x tokens/s, '
            f'{results["speedup_cpu"]:.2f}x tokens/CPU-s; identical '
            f'translations: {results["identical_translations"]}')
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  app.run(main)
