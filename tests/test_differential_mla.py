"""Differential attention and multi-head latent attention: what the contract
suite does not see (λ_init by layer, the reduction to one softmax, rotary
groups, and the size of MLA's decoding cache)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import attention
from attention_jax.attention import base
from attention_jax.attention import frame
from attention_jax.attention import masks

# λ_init = 0.8 − 0.6 exp(−0.3 (l − 1)) for layers l = 1..4, worked out by hand.
LAMBDA_INIT = {1: 0.2, 2: 0.355509, 3: 0.470713, 4: 0.556058}


def _normal(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize('layer, expected', sorted(LAMBDA_INIT.items()))
def test_lambda_init_follows_the_layer(layer, expected):
  mechanism = attention.get('differential')(layer_index=layer - 1)
  np.testing.assert_allclose(mechanism.lambda_init, expected, atol=1e-6)


class _Attend(nn.Module):
  """A mechanism's `attend` alone."""

  mechanism: str
  layer_index: int

  @nn.compact
  def __call__(self, inputs):
    mechanism = attention.get(self.mechanism)(layer_index=self.layer_index)
    return mechanism.attend(self, inputs)


@pytest.mark.parametrize('layer', sorted(LAMBDA_INIT))
def test_differential_with_zero_lambda_is_one_normalised_softmax(layer):
  """λ = 0 leaves (1 − λ_init) · RMSNorm(softmax(Q1 K1ᵀ / √(D/2)) V)."""
  batch, length, heads, depth = 2, 5, 3, 8
  query, key, value = (_normal(seed, (batch, length, heads, depth))
                       for seed in (0, 1, 2))
  segments = jnp.ones((batch, length), jnp.int32)
  steps = jnp.broadcast_to(jnp.arange(length), (batch, length))
  inputs = base.AttentionInputs(
      query, query, key, value,
      masks.TokenMask(segments, segments, steps, steps), num_heads=heads)
  module = _Attend('differential', layer - 1)
  params = module.init(jax.random.key(0), inputs)['params']
  # exp(λ_q1·λ_k1) − exp(λ_q2·λ_k2) + λ_init = 1 − (1 + λ_init) + λ_init.
  root = np.sqrt(np.log(1 + LAMBDA_INIT[layer]))
  unit = np.eye(depth // 2)[0]
  scale = 1 + 0.5 * _normal(3, (depth,))
  params = nn.unbox(params) | {
      'lambda_q1': 0 * unit, 'lambda_k1': 0 * unit, 'lambda_q2': root * unit,
      'lambda_k2': root * unit, 'head_norm': scale}
  out = module.apply({'params': params}, inputs)

  # Group 1 holds the rotary pairs (i, i + 4) of even i: channels 0, 2, 4, 6.
  group = np.array([0, 2, 4, 6])
  single = jnp.concatenate(
      [jax.nn.dot_product_attention(query[..., group], key[..., group],
                                    value[..., half])
       for half in (slice(0, 4), slice(4, 8))], -1)
  rms = jnp.sqrt(jnp.mean(single ** 2, -1, keepdims=True) + 1e-5)
  expected = (1 - LAMBDA_INIT[layer]) * single / rms * scale[None, None, None]
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)


def _layer(name, **changes):
  config = frame.AttentionConfig(
      mechanism=name, num_heads=4, head_dim=8, position_scheme='rope',
      deterministic=True, layer_index=1)
  if name == 'mla':
    config = dataclasses.replace(
        config, options=attention.get('mla').Options(kv_lora_rank=6,
                                                     rope_head_dim=4))
  return frame.MultiHeadAttention(dataclasses.replace(config, **changes))


@pytest.mark.parametrize('name', ['differential', 'mla'])
def test_rope_scores_depend_on_offsets_only(name):
  """Shifting every position alike changes nothing: each differential group
  holds whole rotary pairs, and MLA's rotary parts meet each other only."""
  layer = _layer(name)
  x = _normal(0, (2, 7, 16))
  seg = jnp.ones((2, 7), jnp.int32)
  steps = jnp.broadcast_to(jnp.arange(7), (2, 7))
  params = layer.init(jax.random.key(1), x, x, seg, seg)['params']
  params = jax.tree.map(lambda p: p + 0.3 * _normal(2, p.shape), params)

  def run(positions):
    return layer.apply({'params': params}, x, x, seg, seg, positions,
                       positions)

  np.testing.assert_allclose(run(steps + 11), run(steps), atol=2e-5)


def test_differential_refuses_a_head_dim_not_divisible_by_4():
  layer = _layer('differential', head_dim=6)
  x = jnp.ones((1, 3, 12))
  seg = jnp.ones((1, 3), jnp.int32)
  with pytest.raises(ValueError, match='qkv_dim/num_heads=6 must be '
                     'divisible by 4'):
    layer.init(jax.random.key(0), x, x, seg, seg)


def _decoding_cache(name, *, self_attention=True, width=512, length=16,
                    batch=2):
  """Shapes of the layer's decoding state after its creating call: the
  'cache' collection and, in cross-attention, the MEMORY collection."""
  config = frame.AttentionConfig(
      mechanism=name, num_heads=8, head_dim=64, position_scheme='rope',
      deterministic=True, decode=True)
  layer = frame.MultiHeadAttention(config, causal=self_attention,
                                   self_attention=self_attention)
  x = jnp.ones((batch, length, width))
  seg = jnp.ones((batch, length), jnp.int32)
  variables = jax.eval_shape(layer.init, jax.random.key(0), x, x, seg, seg)
  return {name: variables[name] for name in ('cache', frame.MEMORY)
          if name in variables}


def _bytes_per_token(cache, batch=2, length=16):
  # Keys and values are cached head-major, [B, G, T, D]; other entries
  # [B, T, ...].
  per_slot = [leaf for leaf in jax.tree.leaves(cache)
              if leaf.ndim > 1 and length in leaf.shape[1:3]]
  return sum(leaf.size * leaf.dtype.itemsize
             for leaf in per_slot) / (batch * length)


def test_mla_caches_fewer_bytes_per_token_than_softmax():
  """Width 512, 8 heads of 64, d_c = 256, d_R = 32: 288 floats per token
  against softmax's keys and values, 2·8·64 = 1024."""
  softmax_bytes = _bytes_per_token(_decoding_cache('softmax'))
  mla_bytes = _bytes_per_token(_decoding_cache('mla'))
  assert softmax_bytes == 4 * 1024
  assert mla_bytes == 4 * (256 + 32)
  assert mla_bytes < softmax_bytes


@pytest.mark.parametrize('self_attention', [True, False])
def test_mla_decoding_cache_holds_no_per_head_keys_or_values(self_attention):
  cache = _decoding_cache('mla', self_attention=self_attention)
  paths = {jax.tree_util.keystr(path): leaf for path, leaf in
           jax.tree_util.tree_leaves_with_path(cache)}
  per_head = [p for p in paths
              if ('key' in p and 'key_rope' not in p) or 'value' in p]
  assert not per_head, sorted(paths)
  # No leaf has a heads axis: [B, K, d_c], [B, K, d_R], segment ids, index.
  assert all(leaf.ndim <= 3 for leaf in paths.values()), paths
  latent = [leaf for p, leaf in paths.items() if 'latent' in p]
  assert [leaf.shape for leaf in latent] == [(2, 16, 256)]
