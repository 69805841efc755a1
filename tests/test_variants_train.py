"""Every attention mechanism trains: the smoke config's loss falls."""

import functools

import jax
import numpy as np
import pytest

from attention_jax import attention
from attention_jax import sharding
from attention_jax.data import batches
from attention_jax.data import input_pipeline
from attention_jax.model import from_config
from attention_jax.model.transformer import Transformer
from attention_jax.train import config_check
from attention_jax.train import optim
from attention_jax.train import steps
from attention_jax.train import train_state
from experiments.configs import smoke


NUM_STEPS = 60


@pytest.fixture(scope='module')
def train_batches(data_dir, tmp_path_factory):
  config = smoke.get_config()
  config.data.data_dir = data_dir
  data = input_pipeline.load(config.data, str(tmp_path_factory.mktemp('work')))
  stream = batches.PackedTrainStream(
      data.train, config.batch_size, config.data.max_len, seed=0
  )
  return data.tokenizer.vocab_size(), [next(stream) for _ in range(NUM_STEPS)]


def _placement(name):
  """Config overrides that put mechanism `name` everywhere it can go: a
  causal-only one is the decoder self-attention, a mechanism that cannot be
  causal goes to cross-attention only."""
  caps = attention.get(name).capabilities
  if caps.causal and caps.bidirectional and caps.cross_attention:
    return {'attention': name}
  if caps.causal:
    return {'decoder_self_attention': name}
  return {'cross_attention': name}


@pytest.mark.parametrize('name', attention.names())
def test_variant_lowers_the_smoke_loss(name, train_batches):
  vocab_size, data = train_batches
  config = smoke.get_config()
  for field, value in _placement(name).items():
    config.model[field] = value
  config_check.check_config(config)
  cfg = from_config.transformer_config(config, vocab_size)
  model = Transformer(cfg)
  tx, _ = optim.make_optimizer(config)
  # One device: sharding is tested elsewhere.
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  state, _ = train_state.create(
      model, tx, config.seed, mesh, config.data.max_len,
      sharding.logical_rules(config.mesh),
  )
  train_step = jax.jit(
      functools.partial(steps.train_step, model=model, label_smoothing=0.0)
  )
  losses = []
  for batch in data:
    state, metrics = train_step(state, sharding.to_global(batch, mesh))
    losses.append(float(metrics['loss']))
  assert np.all(np.isfinite(losses)), name
  first, last = np.mean(losses[:10]), np.mean(losses[-10:])
  assert last < first - 1.0, (name, first, last)
