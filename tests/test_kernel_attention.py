"""Kernelised attention (linear, Performer) and the no-attention control."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import attention
from attention_jax.attention import linear
from attention_jax.attention import performer
from attention_jax.model.config import TransformerConfig

import decoding_checks

E, H, D = 8, 2, 4
KERNELS = ['linear', 'performer']


def _cfg(**changes):
  # chunk_size 3 makes every sequence here span several chunks.
  base = TransformerConfig(
      vocab_size=10, emb_dim=E, num_heads=H, qkv_dim=H * D, chunk_size=3,
      num_random_features=16, deterministic=True,
  )
  return base.replace(**changes)


def _normal(seed, shape, scale=1.0):
  return scale * jax.random.normal(jax.random.key(seed), shape)


def _features(name, q, k, seg):
  """(phi_q, phi_k) as the mechanism computes them, and the unshifted ones."""
  if name == 'linear':
    phi_q, phi_k = linear.elu_features(q), linear.elu_features(k)
    return (phi_q, phi_k), (phi_q, phi_k)
  projection = performer.orthogonal_random_features(7, 16, q.shape[-1])
  shifted = (performer.favor_query_features(q, projection),
             performer.favor_key_features(k, projection, seg)[0])
  exact = tuple(
      jnp.exp(performer.softmax_kernel_logits(x, projection)) / 4.0
      for x in (q, k)
  )
  return shifted, exact


def _quadratic(phi_q, phi_k, v, mask_BxQxK):
  """The definition: explicit masked kernel matrix, rows normalised."""
  kernel_BxHxQxK = jnp.einsum('bqhm,bkhm->bhqk', phi_q, phi_k)
  kernel_BxHxQxK = jnp.where(mask_BxQxK[:, None], kernel_BxHxQxK, 0.0)
  weights = kernel_BxHxQxK / kernel_BxHxQxK.sum(-1, keepdims=True)
  return jnp.einsum('bhqk,bkhd->bqhd', weights, v)


@pytest.mark.parametrize('chunk_size', [3, 64])
@pytest.mark.parametrize('name', KERNELS)
def test_causal_form_equals_quadratic_definition(name, chunk_size):
  seg = jnp.array([[1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 0, 0],
                   [1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2]])
  q, k, v = (_normal(i, (2, 12, H, D)) for i in range(3))
  (phi_q, phi_k), exact = _features(name, q, k, seg)
  out = linear.kernel_attention(phi_q, phi_k, v, seg, seg, causal=True,
                                chunk_size=chunk_size)
  mask = ((seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
          & jnp.tril(jnp.ones((12, 12), bool)))
  real = np.asarray(seg != 0)
  np.testing.assert_allclose(
      out[real], _quadratic(*exact, v, mask)[real], atol=1e-5
  )


@pytest.mark.parametrize('chunk_size', [3, 64])
@pytest.mark.parametrize('name', KERNELS)
def test_packed_cross_form_equals_quadratic_definition(name, chunk_size):
  # Segments need not be contiguous when nothing is causal.
  q_seg = jnp.array([[2, 2, 1, 1, 1, 0], [1, 1, 1, 1, 2, 2]])
  kv_seg = jnp.array([[1, 1, 2, 2, 2, 1, 0, 0], [1, 1, 1, 2, 2, 2, 2, 0]])
  q = _normal(0, (2, 6, H, D))
  k, v = _normal(1, (2, 8, H, D)), _normal(2, (2, 8, H, D))
  (phi_q, _), (exact_q, _) = _features(name, q, q, q_seg)
  (_, phi_k), (_, exact_k) = _features(name, k, k, kv_seg)
  out = linear.kernel_attention(phi_q, phi_k, v, q_seg, kv_seg, causal=False,
                                chunk_size=chunk_size)
  mask = (q_seg[:, :, None] == kv_seg[:, None, :]) & (kv_seg[:, None, :] != 0)
  real = np.asarray(q_seg != 0)
  np.testing.assert_allclose(
      out[real], _quadratic(exact_q, exact_k, v, mask)[real], atol=1e-5
  )


def _decode_self_attention(module_cls, cfg, params, x):
  """Outputs of feeding x one token per call, after the creating call."""
  decoder = module_cls(cfg=cfg.replace(decode=True), causal=True)
  _, variables = decoder.apply(params, x, x, None, None, mutable=['cache'])
  cache, outputs = variables['cache'], []
  for t in range(x.shape[1]):
    step = x[:, t:t + 1]
    out, variables = decoder.apply(
        {**params, 'cache': cache}, step, step, None, None,
        jnp.full((x.shape[0], 1), t), jnp.full((x.shape[0], 1), t),
        mutable=['cache'],
    )
    cache = variables['cache']
    outputs.append(out)
  return jnp.concatenate(outputs, 1), cache


@pytest.mark.parametrize('scheme', ['sinusoidal', 'rope'])
@pytest.mark.parametrize('name', KERNELS)
def test_decoding_equals_causal_forward_pass(name, scheme):
  cfg = _cfg(position_scheme=scheme, num_kv_heads=1)
  module_cls = attention.get(name)
  # Large inputs spread the Performer key shifts, so rescaling is exercised.
  x = _normal(3, (2, 7, E), scale=3.0)
  seg = jnp.ones((2, 7), jnp.int32)
  params = module_cls(cfg=cfg, causal=True).init(jax.random.key(4), x, x,
                                                 seg, seg)
  full = module_cls(cfg=cfg, causal=True).apply(params, x, x, seg, seg)
  stepped, cache = _decode_self_attention(module_cls, cfg, params, x)
  np.testing.assert_allclose(stepped, full, atol=1e-5)
  # Constant-size, batch-leading state instead of a growing key cache.
  features = cfg.num_random_features if name == 'performer' else D
  assert cache['state'].shape == (2, H, features, D + 1)


@pytest.mark.parametrize('name', KERNELS + ['no_attention'])
def test_cross_attention_decoding_equals_full_pass(name):
  cfg = _cfg()
  module_cls = attention.get(name)
  memory = _normal(5, (2, 6, E), scale=3.0)
  kv_seg = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
  y = _normal(6, (2, 5, E))
  q_seg = jnp.ones((2, 5), jnp.int32)
  params = module_cls(cfg=cfg).init(jax.random.key(7), y, memory, q_seg,
                                    kv_seg)
  full = module_cls(cfg=cfg).apply(params, y, memory, q_seg, kv_seg)
  decoder = module_cls(cfg=cfg.replace(decode=True))
  _, variables = decoder.apply(params, jnp.zeros_like(y), memory, None,
                               kv_seg, mutable=['cache'])
  for t in range(y.shape[1]):
    out, _ = decoder.apply(
        {**params, **variables}, y[:, t:t + 1], memory, None, kv_seg,
        mutable=['cache'],
    )
    np.testing.assert_allclose(out[:, 0], full[:, t], atol=1e-5)


@pytest.mark.parametrize('name', KERNELS + ['no_attention'])
def test_other_segments_and_padding_do_not_leak(name):
  module = attention.get(name)(cfg=_cfg())
  x = _normal(8, (1, 7, E), scale=3.0)
  seg = jnp.array([[1, 1, 1, 2, 2, 0, 0]])
  params = module.init(jax.random.key(9), x, x, seg, seg)
  out = module.apply(params, x, x, seg, seg)
  padding_changed = x.at[0, 5:].set(_normal(10, (2, E), scale=30.0))
  out_padding = module.apply(params, padding_changed, padding_changed, seg,
                             seg)
  np.testing.assert_allclose(out[0, :5], out_padding[0, :5], atol=1e-6)
  other_changed = x.at[0, 3:].set(_normal(11, (4, E), scale=30.0))
  out_other = module.apply(params, other_changed, other_changed, seg, seg)
  np.testing.assert_allclose(out[0, :3], out_other[0, :3], atol=1e-6)
  assert not np.allclose(out[0, 3:5], out_other[0, 3:5], atol=1e-3)


@pytest.mark.parametrize('name', KERNELS)
def test_causality_through_gradients(name):
  module = attention.get(name)(cfg=_cfg(), causal=True)
  x = _normal(12, (1, 8, E))
  seg = jnp.array([[1, 1, 1, 1, 2, 2, 2, 0]])
  params = module.init(jax.random.key(13), x, x, seg, seg)
  jacobian = jax.jacrev(lambda h: module.apply(params, h, h, seg, seg))(x)
  influence_QxK = np.abs(np.asarray(jacobian[0, :, :, 0])).sum((1, 3))
  allowed = (np.tril(np.ones((8, 8), bool))
             & (seg[0][:, None] == seg[0][None, :]) & (seg[0] != 0)[None, :])
  real = np.asarray(seg[0] != 0)
  assert np.all(influence_QxK[real][~allowed[real]] == 0)
  assert np.all(influence_QxK[real][allowed[real]] > 0)


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


def test_no_attention_ignores_query_content():
  module = attention.get('no_attention')(cfg=_cfg())
  q_seg = jnp.array([[1, 1, 2, 2, 0]])
  kv_seg = jnp.array([[1, 1, 1, 2, 2, 0]])
  y, memory = _normal(14, (1, 5, E)), _normal(15, (1, 6, E))
  params = module.init(jax.random.key(16), y, memory, q_seg, kv_seg)
  out = module.apply(params, y, memory, q_seg, kv_seg)
  out_other_queries = module.apply(params, _normal(17, (1, 5, E)), memory,
                                   q_seg, kv_seg)
  np.testing.assert_allclose(out, out_other_queries, atol=1e-6)
  np.testing.assert_allclose(out[0, 0], out[0, 1], atol=1e-6)
  assert not np.allclose(out[0, 1], out[0, 2], atol=1e-3)


def test_capabilities():
  for name in KERNELS:
    assert attention.get(name).can_be_causal
    assert not attention.get(name).forms_scores
  no_attention = attention.get('no_attention')
  assert not no_attention.can_be_causal and not no_attention.forms_scores
  x = jnp.ones((1, 3, E))
  seg = jnp.ones((1, 3), jnp.int32)
  with pytest.raises(ValueError, match='cannot be causal'):
    no_attention(cfg=_cfg(), causal=True).init(jax.random.key(0), x, x, seg,
                                               seg)


@pytest.mark.parametrize('changes', [
    dict(attention='linear', cross_attention='no_attention'),
    dict(attention='performer', position_scheme='rope'),
])
def test_transformer_decoding_equals_full_forward_pass(changes):
  decoding_checks.assert_cached_decoding_equals_full_forward(TransformerConfig(
      vocab_size=30, emb_dim=16, num_heads=2, num_encoder_layers=1,
      num_decoder_layers=1, qkv_dim=16, mlp_dim=32, max_len=8, chunk_size=3,
      num_random_features=16, deterministic=True, **changes,
  ))
