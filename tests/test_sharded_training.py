"""Data and FSDP meshes, gradient accumulation and bfloat16 compute.

Every check trains the smoke-sized model on the same synthetic packed
batches, so the runs differ only in how the computation is laid out.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import sharding
from attention_jax.model import from_config
from attention_jax.model.transformer import Transformer
from attention_jax.train import config_check
from attention_jax.train import optim
from attention_jax.train import steps
from attention_jax.train import train_state
from experiments.configs import smoke

VOCAB = 64
ROWS, LENGTH = 16, 24


def _batches(count, rows=ROWS, seed=0):
  """Packed-format batches: two sentences per row, the second half shorter."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    segments = np.repeat([[1] * 14 + [2] * 8 + [0] * 2], rows, 0)
    positions = np.concatenate(
        [np.arange(14), np.arange(8), [0, 0]]
    )[None].repeat(rows, 0)
    tokens = rng.integers(3, VOCAB, (rows, LENGTH)) * (segments > 0)
    # Targets copy the source reversed in each sentence: learnable.
    targets = np.concatenate(
        [tokens[:, 13::-1], tokens[:, 21:13:-1], tokens[:, 22:]], 1
    )
    out.append({
        'inputs': tokens.astype(np.int32),
        'targets': targets.astype(np.int32),
        'inputs_segmentation': segments.astype(np.int32),
        'targets_segmentation': segments.astype(np.int32),
        'inputs_position': positions.astype(np.int32),
        'targets_position': positions.astype(np.int32),
    })
  return out


def _config(**overrides):
  config = smoke.get_config()
  config.model.dropout_rate = 0.1
  for name, value in overrides.items():
    target = config
    *parents, leaf = name.split('.')
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def _train(config, batches, devices=None):
  """Losses of each step, the final state and its shardings."""
  mesh = sharding.make_mesh(config.mesh, devices)
  model = Transformer(from_config.transformer_config(config, VOCAB))
  tx, _ = optim.make_optimizer(config)
  state, shardings = train_state.create(
      model, tx, config.seed, mesh, LENGTH, sharding.logical_rules(config.mesh)
  )
  train_step = jax.jit(
      functools.partial(
          steps.train_step, model=model,
          label_smoothing=config.label_smoothing,
          micro_batches=config.micro_batches,
      ),
      in_shardings=(shardings, sharding.batch_sharding(mesh)),
      out_shardings=(shardings, sharding.replicated(mesh)),
      donate_argnums=0,
  )
  losses = []
  for batch in batches:
    state, metrics = train_step(state, sharding.to_global(batch, mesh))
    losses.append(float(metrics['loss']))
  return np.array(losses), state, shardings


@pytest.fixture(scope='module')
def one_device_losses():
  return _train(_config(), _batches(20), jax.devices()[:1])[0]


@pytest.mark.parametrize('data,fsdp', [(8, 1), (2, 4)])
def test_meshes_of_8_devices_give_the_losses_of_one_device(
    one_device_losses, data, fsdp
):
  assert jax.device_count() == 8
  losses, state, shardings = _train(
      _config(**{'mesh.data': data, 'mesh.fsdp': fsdp}), _batches(20)
  )
  # float32 sums are reduced in another order across devices.
  np.testing.assert_allclose(losses, one_device_losses, rtol=2e-5)
  assert losses[-1] < losses[0] - 0.5
  embedding = state.params['embed']['embedding']
  assert tuple(shardings.params['embed']['embedding'].spec) == (None, 'fsdp')
  local_shape = embedding.addressable_shards[0].data.shape
  assert local_shape == (VOCAB, 64 // fsdp)
  adam_mu = state.opt_state[1][0].mu['embed']['embedding']
  assert adam_mu.addressable_shards[0].data.shape == local_shape


def test_the_state_is_created_sharded_without_a_whole_copy():
  config = _config(**{'mesh.data': 2, 'mesh.fsdp': 4})
  mesh = sharding.make_mesh(config.mesh)
  model = Transformer(from_config.transformer_config(config, VOCAB))
  tx, _ = optim.make_optimizer(config)
  _, shardings = train_state.abstract(
      model, tx, config.seed, mesh, LENGTH, sharding.logical_rules(config.mesh)
  )
  split = [
      s for s in jax.tree.leaves(shardings.params) if 'fsdp' in tuple(s.spec)
  ]
  assert len(split) > 10
  state, _ = train_state.create(
      model, tx, config.seed, mesh, LENGTH, sharding.logical_rules(config.mesh)
  )
  kernel = state.params['decoder_0']['mlp']['Dense_0']['kernel']
  # Every device holds a quarter of the rows, no device the whole matrix.
  assert {s.data.shape for s in kernel.addressable_shards} == {(16, 128)}


def test_k_micro_batches_give_the_update_of_one_batch_k_times_larger():
  batch = _batches(1, rows=32)
  config = _config(**{'model.dropout_rate': 0.0,
                      'model.attention_dropout_rate': 0.0})
  whole_loss, whole, _ = _train(config, batch)
  config.micro_batches = 4
  accumulated_loss, accumulated, _ = _train(config, batch)
  np.testing.assert_allclose(accumulated_loss, whole_loss, rtol=1e-6)
  # Adam's first moment after one step is (1 - beta1) times the clipped
  # gradient; the parameters themselves would hide differences, since
  # Adam's first update is sign-like. Gradients that are zero in exact
  # arithmetic (a key bias under softmax) are rounding noise in both runs,
  # so the tolerance is relative to the largest gradient.
  mu_whole, mu_accumulated = (
      np.concatenate([np.ravel(x) for x in jax.tree.leaves(s.opt_state[1][0].mu)])
      for s in (whole, accumulated)
  )
  np.testing.assert_allclose(
      mu_accumulated, mu_whole, rtol=1e-4, atol=1e-5 * np.abs(mu_whole).max()
  )


def test_bfloat16_compute_keeps_float32_parameters_and_trains():
  config = _config(**{'model.dtype': 'bfloat16'})
  losses, state, _ = _train(config, _batches(30))
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype('float32')}
  assert np.all(np.isfinite(losses))
  assert losses[-5:].mean() < losses[:5].mean() - 0.5, losses
  model = Transformer(from_config.transformer_config(config, VOCAB).replace(
      deterministic=True))
  batch = _batches(1, seed=1)[0]
  forward = jax.jit(model.apply)
  logits = forward({'params': state.params}, batch['inputs'], batch['targets'])
  # The matrix products themselves run in bfloat16.
  hlo = forward.lower({'params': state.params}, batch['inputs'],
                      batch['targets']).as_text()
  assert 'dot_general' in hlo and 'xbf16>' in hlo
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(logits)))


@pytest.mark.parametrize('overrides,message', [
    ({'mesh.data': 3}, r'config.mesh.data=3 × config.mesh.fsdp=1 needs 3 '
                       r'devices, but this run has 8'),
    ({'mesh.data': -1, 'mesh.fsdp': 3}, r'not divisible by 3'),
    ({'mesh.data': -1, 'mesh.fsdp': -1}, r'at most one may be -1'),
    ({'batch_size': 12}, r'config.batch_size=12 .* multiple of 8'),
    ({'micro_batches': 4}, r'config.batch_size=16 .*micro_batches=4.* '
                           r'multiple of 32'),
    ({'mesh.rules.embed': 'model'}, r"config.mesh.rules.embed='model' is not "
                                    r'a mesh axis'),
])
def test_parallelism_mistakes_are_refused_before_compilation(
    overrides, message
):
  with pytest.raises(ValueError, match=message):
    config_check.check_config(_config(**overrides))
