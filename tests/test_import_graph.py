"""Packages import one way: sharding at the bottom, inference without training."""

import json
import subprocess
import sys

import smoke_runs


def _loaded_by(module: str) -> set[str]:
  """Modules a fresh interpreter holds after importing `module` alone."""
  result = subprocess.run(
      [sys.executable, '-c',
       f'import json, sys, {module}; print(json.dumps(list(sys.modules)))'],
      capture_output=True, text=True, check=True, cwd=smoke_runs.REPO,
  )
  return set(json.loads(result.stdout.splitlines()[-1]))


def _ours(modules: set[str]) -> set[str]:
  return {m for m in modules if m.startswith('attention_jax.')}


def test_sharding_imports_only_partitioning():
  assert _ours(_loaded_by('attention_jax.sharding')) == {
      'attention_jax.partitioning', 'attention_jax.sharding',
  }


def test_decoding_imports_no_training_code():
  loaded = _loaded_by('attention_jax.decode.translator')
  assert not {m for m in loaded if m.startswith('attention_jax.train')}
  assert 'optax' not in loaded


def test_translation_needs_no_optimizer_and_no_trainer():
  loaded = _loaded_by('attention_jax.translate')
  assert not loaded & {
      'optax', 'attention_jax.train.optim', 'attention_jax.train.trainer',
  }
