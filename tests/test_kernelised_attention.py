"""Kernelised attention (linear, Performer) and the mean-pooling control:
what their kernels estimate and what their decoding keeps."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import attention
from attention_jax.attention import base
from attention_jax.attention import frame
from attention_jax.attention import linear
from attention_jax.attention import performer

E, H, D = 8, 2, 4
RECURRENT = [name for name in attention.names()
             if attention.get(name).capabilities.decoding_state
             is base.DecodingState.RECURRENT]


def _normal(seed, shape, scale=1.0):
  return scale * jax.random.normal(jax.random.key(seed), shape)


def _layer(name, *, causal=False, self_attention=True, decode=False):
  options = attention.MECHANISMS.options(name,
                                         attention.get(name).TEST_OPTIONS)
  config = frame.AttentionConfig(mechanism=name, options=options,
                                 num_heads=H, head_dim=D, deterministic=True,
                                 decode=decode)
  return frame.MultiHeadAttention(config, causal=causal,
                                  self_attention=self_attention)


def test_performer_error_shrinks_with_more_features():
  seg = jnp.ones((2, 16), jnp.int32)
  errors = []
  for num_features in (16, 256, 4096):
    seed_errors = []
    for seed in range(3):
      q, k, v = (_normal(10 * seed + i, (2, 16, H, D), scale=0.5)
                 for i in range(3))
      projection = performer.orthogonal_random_features(
          seed, num_features, D
      )
      approx = linear.kernel_attention(
          performer.favor_query_features(q, projection),
          performer.favor_key_features(k, projection, seg)[0],
          v, seg, seg, causal=False, chunk_size=64,
      )
      exact = jax.nn.dot_product_attention(q, k, v)
      seed_errors.append(float(jnp.abs(approx - exact).mean()))
    errors.append(np.mean(seed_errors))
  assert errors[0] > 2 * errors[1] > 4 * errors[2], errors


def test_random_features_are_orthogonal_within_blocks():
  projection = performer.orthogonal_random_features(0, 20, D)
  for block in (projection[:D], projection[D:2 * D]):
    directions = block / np.linalg.norm(block, axis=1, keepdims=True)
    np.testing.assert_allclose(directions @ directions.T, np.eye(D),
                               atol=1e-5)


def test_performer_features_are_fixed_per_layer_and_differ_between_layers():
  first = performer.layer_projection(('decoder_0', 'self_attention'), 16, D)
  np.testing.assert_array_equal(
      first, performer.layer_projection(('decoder_0', 'self_attention'), 16,
                                        D))
  other = performer.layer_projection(('decoder_1', 'self_attention'), 16, D)
  assert not np.allclose(first, other)


@pytest.mark.parametrize('chunk_size', [3, 64])
def test_cross_sums_with_interleaved_segments_equal_the_masked_kernel(
    chunk_size):
  # Without causality, a segment's tokens need not be contiguous (the
  # merge-and-sort path when a chunk holds fewer than all tokens).
  q_seg = jnp.array([[2, 2, 1, 1, 1, 0], [1, 1, 1, 1, 2, 2]], jnp.int32)
  kv_seg = jnp.array([[1, 1, 2, 2, 2, 1, 0, 0], [1, 1, 1, 2, 2, 2, 2, 0]],
                     jnp.int32)
  phi_q = linear.elu_features(_normal(0, (2, 6, H, D)))
  phi_k = linear.elu_features(_normal(1, (2, 8, H, D)))
  v = _normal(2, (2, 8, H, D))
  out = linear.kernel_attention(phi_q, phi_k, v, q_seg, kv_seg, causal=False,
                                chunk_size=chunk_size)
  visible = (np.asarray(q_seg)[:, :, None] == np.asarray(kv_seg)[:, None]) & (
      np.asarray(kv_seg)[:, None] != 0)
  kernel_BxHxQxK = np.einsum('bqhm,bkhm->bhqk', phi_q, phi_k) * visible[:,
                                                                        None]
  # Padding queries see no key; nothing reads them.
  total = kernel_BxHxQxK.sum(-1, keepdims=True)
  weights = kernel_BxHxQxK / np.where(total > 0, total, 1.0)
  expected = np.einsum('bhqk,bkhd->bqhd', weights, v)
  real = np.asarray(q_seg != 0)
  np.testing.assert_allclose(out[real], expected[real], atol=1e-5)


def _decode(layer, params, x):
  """Outputs of feeding x one token per call, after the creating call."""
  seg = jnp.ones(x.shape[:2], jnp.int32)
  _, variables = layer.apply({'params': params}, x, x, seg, seg,
                             mutable=['cache'])
  outputs = []
  for t in range(x.shape[1]):
    step = x[:, t:t + 1]
    out, variables = layer.apply({'params': params, **variables}, step, step,
                                 seg[:, :1], seg[:, :1], mutable=['cache'])
    outputs.append(out)
  return jnp.concatenate(outputs, 1), variables['cache']


@pytest.mark.parametrize('name', RECURRENT)
def test_recurrent_decoding_state_does_not_grow_with_length(name):
  layer = _layer(name, causal=True, decode=True)
  shapes = {}
  for length in (3, 9):
    x = _normal(0, (2, length, E))
    seg = jnp.ones((2, length), jnp.int32)
    params = nn.unbox(layer.init(jax.random.key(1), x, x, seg, seg))['params']
    _, cache = _decode(layer, params, x)
    shapes[length] = jax.tree.map(jnp.shape, cache)
    # Beam search reorders every cache leaf that leads with the batch.
    for path, leaf in jax.tree_util.tree_leaves_with_path(cache['state']):
      assert leaf.shape[0] == 2, path
  assert shapes[3] == shapes[9]


def test_performer_decoding_keeps_sums_relative_to_the_largest_shift():
  # Large inputs spread the key shifts over many orders of magnitude, so the
  # running sums are rescaled at many steps.
  full_layer = _layer('performer', causal=True)
  x = _normal(3, (2, 7, E), scale=3.0)
  seg = jnp.ones((2, 7), jnp.int32)
  params = nn.unbox(full_layer.init(jax.random.key(4), x, x, seg,
                                    seg))['params']
  full = full_layer.apply({'params': params}, x, x, seg, seg)
  stepped, cache = _decode(_layer('performer', causal=True, decode=True),
                           params, x)
  np.testing.assert_allclose(stepped, full, atol=1e-5)
  assert np.all(np.isfinite(cache['state']['sums']))


def test_mean_pooling_ignores_query_content():
  layer = _layer('mean_pooling', self_attention=False)
  q_seg = jnp.array([[1, 1, 2, 2, 0]], jnp.int32)
  kv_seg = jnp.array([[1, 1, 1, 2, 2, 0]], jnp.int32)
  y, memory = _normal(14, (1, 5, E)), _normal(15, (1, 6, E))
  params = nn.unbox(layer.init(jax.random.key(16), y, memory, q_seg, kv_seg))
  assert set(params['params']) == {'value', 'out'}
  out = layer.apply(params, y, memory, q_seg, kv_seg)
  out_other_queries = layer.apply(params, _normal(17, (1, 5, E)), memory,
                                  q_seg, kv_seg)
  np.testing.assert_allclose(out, out_other_queries, atol=1e-6)
  np.testing.assert_allclose(out[0, 0], out[0, 1], atol=1e-6)
  assert not np.allclose(out[0, 1], out[0, 2], atol=1e-3)
