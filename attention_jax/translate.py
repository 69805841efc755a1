"""Translates stdin to stdout with a workdir's latest checkpoint."""

import json
import os
import sys

import jax
import ml_collections
import sentencepiece as spm

from attention_jax.model import from_config
from attention_jax.model.transformer import Transformer
from attention_jax.train import optim
from attention_jax.train import sharding
from attention_jax.train import trainer
from attention_jax.train.checkpoint import Checkpointer


def load_params(workdir: str, mesh):
  """(config, model config, params) of the latest checkpoint in `workdir`."""
  config_path = os.path.join(workdir, 'config.json')
  vocab_path = os.path.join(workdir, 'vocab.model')
  for path in (config_path, vocab_path):
    if not os.path.exists(path):
      raise FileNotFoundError(
          f'{path} is missing: --workdir must be the directory of a training '
          'run (launch.py --config=... --workdir=DIR).'
      )
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  sp = spm.SentencePieceProcessor(model_file=vocab_path)
  cfg = from_config.transformer_config(config, sp.vocab_size())
  checkpointer = Checkpointer(workdir, config.keep_checkpoints)
  step = checkpointer.latest_step()
  if step is None:
    raise FileNotFoundError(
        f'No checkpoint in {checkpointer.directory}; train first.'
    )
  tx, _ = optim.make_optimizer(config)
  # Decoding is data-parallel: whole parameters on every device.
  abstract, shardings = sharding.abstract_train_state(
      Transformer(cfg), tx, config.seed, mesh, config.data.max_len, rules={}
  )
  state, _ = checkpointer.restore(step, abstract, shardings)
  checkpointer.close()
  return config, cfg, sp, state.params


def translate_stdin(workdir: str) -> None:
  """Reads one source sentence per line, writes one translation per line."""
  mesh = sharding.make_mesh(ml_collections.ConfigDict({'data': -1, 'fsdp': 1}))
  config, cfg, sp, params = load_params(workdir, mesh)
  translator = trainer.translator_for(config, cfg, mesh)
  sentences = [line.rstrip('\n') for line in sys.stdin]
  for translation in translator.translate(params, sp, sentences):
    if jax.process_index() == 0:
      print(translation)
