"""The smoke config end to end on 8 simulated devices, and resumption."""

import json
import math
import os
import subprocess
import sys

import jax
import pytest

from attention_jax.train import config_check
from attention_jax.train import trainer
from experiments.configs import smoke

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(data_dir, num_train_steps):
  config = smoke.get_config()
  config.data.data_dir = data_dir
  config.num_train_steps = num_train_steps
  config.log_every = 5
  config.checkpoint_every = 20
  config.eval_every = 20
  config.eval.bleu_sentences = 16
  config.eval.final_sentences = 32
  return config


def _losses(workdir):
  with open(workdir / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  return {r['step']: r['train/loss'] for r in records if 'train/loss' in r}


def test_smoke_trains_on_8_devices_and_resumes_with_same_losses(
    data_dir, tmp_path
):
  assert jax.device_count() == 8
  results = trainer.train_and_evaluate(_config(data_dir, 40), str(tmp_path / 'a'))
  losses = _losses(tmp_path / 'a')
  assert sorted(losses) == list(range(5, 41, 5))
  assert losses[40] < losses[5] - 0.5, losses
  for key in ('test_bleu', 'valid_bleu', 'test_chrf', 'valid_chrf',
              'eval_loss', 'num_params', 'train_tokens_per_sec', 'steps',
              'train_seconds', 'config'):
    assert key in results
  assert math.isfinite(results['test_bleu']) and results['steps'] == 40
  assert 0 <= results['test_chrf'] <= 100
  with open(tmp_path / 'a' / 'results.json') as f:
    written = json.load(f)
  assert written['test_bleu'] == results['test_bleu']
  for split in ('test', 'valid'):
    assert written[f'{split}_bleu_signature'].startswith(
        'nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:')
    assert written[f'{split}_chrf_signature'].startswith(
        'nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:')

  # Stopped at step 20, then restarted in the same workdir with 40 steps.
  trainer.train_and_evaluate(_config(data_dir, 20), str(tmp_path / 'b'))
  trainer.train_and_evaluate(_config(data_dir, 40), str(tmp_path / 'b'))
  resumed = _losses(tmp_path / 'b')
  for step in range(25, 41, 5):
    assert resumed[step] == pytest.approx(losses[step], abs=1e-5), step


def test_bad_config_is_refused_with_the_field_and_the_fix(data_dir):
  config = _config(data_dir, 1)
  config.model.num_heads = 3
  with pytest.raises(ValueError, match=r'config.model.emb_dim=64 .*num_heads'):
    config_check.check_config(config)


# Every entry point that takes --config.<field> overrides.
@pytest.mark.parametrize('command', [
    ['launch.py', '--workdir=/nonexistent'],
    ['-m', 'experiments.benchmark_step'],
    ['-m', 'experiments.benchmark_faults'],
])
def test_misspelled_override_is_an_error(command):
  result = subprocess.run(
      [sys.executable, *command, '--config=experiments/configs/smoke.py',
       '--config.model.num_haeds=2'],
      capture_output=True, text=True, check=False, cwd=REPO,
      env=dict(os.environ, ATTENTION_JAX_HUGE_PAGES='0'),
  )
  assert result.returncode == 1, result.stderr
  # One line naming the field and ml_collections' hint, no traceback.
  assert result.stderr.startswith(
      'Config override refused: no such field \'num_haeds\'. Did you mean '
      '"num_heads"'), result.stderr
  assert 'Traceback' not in result.stderr
