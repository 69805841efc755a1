"""--mode=translate: parameters alone, restored as training left them."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import smoke_runs
import tiny_corpus

from attention_jax import sharding
from attention_jax import translate
from attention_jax.data import input_pipeline
from attention_jax.decode.translator import translator_for
from attention_jax.model.transformer import Transformer
from attention_jax.train import optim
from attention_jax.train import train_state
from attention_jax.train import trainer
from attention_jax.train.checkpoint import Checkpointer
from experiments.configs import smoke

SENTENCES = 8


def test_translate_restores_the_trained_parameters_and_translations(
    data_dir, tmp_path
):
  config = smoke.get_config()
  config.data.data_dir = data_dir
  config.num_train_steps = 10
  config.log_every = 5
  config.checkpoint_every = 10
  config.eval.valid_bleu = False
  config.eval.final_sentences = SENTENCES
  workdir = str(tmp_path / 'run')
  trainer.train_and_evaluate(config, workdir)

  # Parameters alone equal those of the whole training state.
  mesh = sharding.make_mesh(config.mesh)
  _, cfg, _, params = translate.load_params(workdir, mesh)
  abstract, shardings = train_state.abstract(
      Transformer(cfg), optim.make_optimizer(config)[0], config.seed, mesh,
      config.data.max_len, rules={},
  )
  checkpointer = Checkpointer(workdir, config.keep_checkpoints)
  state, _ = checkpointer.restore(
      checkpointer.latest_step(), abstract, shardings
  )
  checkpointer.close()
  assert jax.tree.structure(params) == jax.tree.structure(state.params)
  jax.tree.map(np.testing.assert_array_equal, params, state.params)

  # The command line, on the same 8 devices (conftest), translates as the
  # training run's final evaluation did.
  data = input_pipeline.load(config.data, workdir)
  sources = [source for source, _ in data.test_text[:SENTENCES]]
  result = subprocess.run(
      [sys.executable, 'launch.py', '--mode=translate', f'--workdir={workdir}'],
      input=''.join(s + '\n' for s in sources), capture_output=True,
      text=True, check=False, cwd=smoke_runs.REPO,
  )
  assert result.returncode == 0, result.stderr
  with open(os.path.join(workdir, 'translations', 'test.txt')) as f:
    assert result.stdout == f.read()


def test_blank_lines_stay_blank_and_truncation_is_counted(tmp_path):
  """CLI and results.json: blank in, blank out; cut sources are counted."""
  config = tiny_corpus.config(tmp_path)
  long_source = ' '.join(['casa perro gato'] * 30)
  tiny_corpus.write_tsv(tmp_path / 'test.tsv', seed=4, count=3,
                        extra=[(long_source, 'HOUSE')])
  config.eval.final_sentences = 0
  workdir = str(tmp_path / 'run')
  results = trainer.train_and_evaluate(config, workdir)
  assert results['test_truncated_sources'] == 1
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['test_truncated_sources'] == 1

  mesh = sharding.make_mesh(config.mesh)
  _, cfg, sp, params = translate.load_params(workdir, mesh)
  translator = translator_for(config, cfg, mesh)
  sources = ['casa perro', 'rio verde grande', long_source]
  alone = translator.translate(params, sp, sources)
  lines = ['', sources[0], '   ', sources[1], '\t', sources[2], '']
  result = subprocess.run(
      [sys.executable, 'launch.py', '--mode=translate', f'--workdir={workdir}'],
      input=''.join(line + '\n' for line in lines), capture_output=True,
      text=True, check=False, cwd=smoke_runs.REPO,
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.split('\n')[:-1] == [
      '', alone[0], '', alone[1], '', alone[2], '']
  assert ("Truncated 1 of 7 source sentences longer than the model's "
          'max_len=32 tokens' in result.stderr)
