"""Translates stdin to stdout with a workdir's latest checkpoint.

Only the parameters are restored: translating needs no optimizer.
"""

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections
import sentencepiece as spm

from attention_jax import sharding
from attention_jax.data import data_identity
from attention_jax.decode.translator import translator_for
from attention_jax.model import from_config
from attention_jax.model.config import TransformerConfig
from attention_jax.model.transformer import Transformer
from attention_jax.train import run_config
from attention_jax.train.checkpoint import Checkpointer


def _abstract_params(cfg: TransformerConfig, max_len: int, mesh: Mesh):
  """Shapes of the model's parameters, replicated on every device.

  Decoding is data-parallel: whole parameters on every device.
  """
  dummy = jax.ShapeDtypeStruct((1, max_len), jnp.int32)
  boxed = jax.eval_shape(
      Transformer(cfg).init, jax.random.key(0), dummy, dummy
  )['params']
  return nn.unbox(boxed), sharding.named_shardings(boxed, mesh, rules={})


def load_params(workdir: str, mesh: Mesh):
  """(config, model config, vocabulary, params) of `workdir`'s latest step."""
  config_path = os.path.join(workdir, 'config.json')
  vocab_path = os.path.join(workdir, 'vocab.model')
  for path in (config_path, vocab_path):
    if not os.path.exists(path):
      raise FileNotFoundError(
          f'{path} is missing: --workdir must be the directory of a training '
          'run (launch.py --config=... --workdir=DIR).'
      )
  config = ml_collections.ConfigDict(run_config.load(workdir))
  from_config.check_not_legacy(config.model, config_path)
  # The vocabulary the checkpoint was trained with, nothing else.
  data_identity.check_vocabulary(workdir)
  sp = spm.SentencePieceProcessor(model_file=vocab_path)
  cfg = from_config.transformer_config(config, sp.vocab_size())
  checkpointer = Checkpointer(workdir, config.keep_checkpoints)
  restored = checkpointer.restore_params_latest(
      *_abstract_params(cfg, config.data.max_len, mesh)
  )
  if restored is None:
    raise FileNotFoundError(
        f'No checkpoint in {checkpointer.directory}; train first.'
    )
  _, params = restored
  checkpointer.close()
  return config, cfg, sp, params


def translate_stdin(workdir: str) -> None:
  """Reads one source sentence per line, writes one translation per line."""
  mesh = sharding.make_mesh(ml_collections.ConfigDict({'data': -1, 'fsdp': 1}))
  config, cfg, sp, params = load_params(workdir, mesh)
  translator = translator_for(config, cfg, mesh)
  sentences = [line.rstrip('\n') for line in sys.stdin]
  for translation in translator.translate(params, sp, sentences):
    if jax.process_index() == 0:
      print(translation)
