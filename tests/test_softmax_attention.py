"""Softmax attention against references nobody here wrote, grouped key/value
heads, and what distinguishes the other scores of the softmax family."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import attention
from attention_jax.attention import base
from attention_jax.attention import frame
from attention_jax.attention import gated
from attention_jax.attention import masks

B, Q, K, E, H, D = 2, 5, 7, 16, 4, 8


def _normal(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape)


def _layer(mechanism='softmax', *, causal=False, self_attention=True,
           **changes):
  config = frame.AttentionConfig(mechanism=mechanism, num_heads=H,
                                 head_dim=D, deterministic=True, **changes)
  return frame.MultiHeadAttention(config, causal=causal,
                                  self_attention=self_attention)


def _segments():
  # Row 0: two packed segments and padding; row 1: one segment, padded.
  q_seg = jnp.array([[1, 1, 2, 2, 0], [1, 1, 1, 1, 0]], jnp.int32)
  kv_seg = jnp.array([[1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 0, 0]],
                     jnp.int32)
  return q_seg, kv_seg


def _allowed(q_seg, kv_seg, causal):
  """Who sees whom, from the definition, [B, 1, Q, K]."""
  q_seg, kv_seg = np.asarray(q_seg), np.asarray(kv_seg)
  allowed = (q_seg[:, :, None] == kv_seg[:, None, :]) & (
      kv_seg[:, None, :] != 0)
  if causal:
    num_q, num_k = q_seg.shape[1], kv_seg.shape[1]
    # Queries are the last Q of the keys' sequence.
    allowed &= (np.arange(num_k)[None, :]
                <= np.arange(num_q)[:, None] + num_k - num_q)[None]
  return allowed[:, None]


@pytest.mark.parametrize('with_bias', [False, True])
@pytest.mark.parametrize('num_kv_heads', [H, 2, 1])
@pytest.mark.parametrize('causal', [False, True])
def test_attend_matches_jax_nn(causal, num_kv_heads, with_bias):
  q = _normal(0, (B, Q, H, D))
  k, v = (_normal(i, (B, K, num_kv_heads, D)) for i in (1, 2))
  bias = _normal(3, (B, H, Q, K)) if with_bias else None
  q_seg, kv_seg = _segments()
  positions = jnp.zeros((B, Q), jnp.int32), jnp.zeros((B, K), jnp.int32)
  inputs = base.AttentionInputs(
      jnp.zeros((B, Q, E)), q, k, v,
      masks.TokenMask(q_seg, kv_seg, *positions, causal=causal),
      bias_BxHxQxK=bias, causal=causal, num_heads=H,
  )
  ours = attention.get('softmax')().attend(None, inputs)
  allowed = _allowed(q_seg, kv_seg, causal)
  # jax.nn groups query heads onto key/value heads on its own.
  reference = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=allowed)
  # Queries that see no key at all (padding; the first causal query of row
  # 0's segment 1, as keys are offset by K - Q) are read by nothing.
  real = allowed[:, 0].any(-1)
  np.testing.assert_allclose(ours[real], reference[real], atol=1e-5)


def test_layer_matches_flax_multi_head_attention():
  x_q, x_kv = _normal(0, (B, Q, E)), _normal(1, (B, K, E))
  q_seg, kv_seg = _segments()
  ours = _layer(self_attention=False)
  params = nn.unbox(ours.init(jax.random.key(2), x_q, x_kv, q_seg, kv_seg))
  reference = nn.MultiHeadDotProductAttention(
      num_heads=H, qkv_features=H * D, deterministic=True
  )
  allowed = _allowed(q_seg, kv_seg, causal=False)
  real = allowed[:, 0].any(-1)
  np.testing.assert_allclose(
      ours.apply(params, x_q, x_kv, q_seg, kv_seg)[real],
      reference.apply(params, x_q, x_kv, mask=allowed)[real],
      atol=1e-5,
  )


@pytest.mark.parametrize('num_kv_heads', [1, 2])
def test_grouped_query_layer_matches_jax_nn(num_kv_heads):
  x_q, x_kv = _normal(0, (B, Q, E)), _normal(1, (B, K, E))
  q_seg, kv_seg = jnp.ones((B, Q), jnp.int32), jnp.ones((B, K), jnp.int32)
  layer = _layer(self_attention=False, num_kv_heads=num_kv_heads)
  params = nn.unbox(layer.init(jax.random.key(2), x_q, x_kv, q_seg,
                                   kv_seg))
  p = params['params']
  dense = lambda name, x: (  # noqa: E731
      jnp.einsum('ble,ehd->blhd', x, p[name]['kernel'])
      + p[name]['bias'][None, None]
  )
  out_BxQxHxD = jax.nn.dot_product_attention(
      dense('query', x_q), dense('key', x_kv), dense('value', x_kv)
  )
  expected = (
      jnp.einsum('bqhd,hde->bqe', out_BxQxHxD, p['out']['kernel'])
      + p['out']['bias'][None, None]
  )
  np.testing.assert_allclose(
      layer.apply(params, x_q, x_kv, q_seg, kv_seg), expected, atol=1e-5
  )


@pytest.mark.parametrize('num_kv_heads', [1, 2])
def test_grouped_query_shrinks_projections_and_cache(num_kv_heads):
  x = jnp.zeros((3, 6, E))
  seg = jnp.ones((3, 6), jnp.int32)
  sizes = {}
  for kv_heads in (0, num_kv_heads):
    decoder = _layer(causal=True, decode=True, num_kv_heads=kv_heads)
    variables = nn.unbox(decoder.init(jax.random.key(0), x, x, seg, seg))
    assert variables['params']['key']['kernel'].shape == (E, kv_heads or H, D)
    assert variables['cache']['cached_key'].shape == (3, kv_heads or H, 6, D)
    sizes[kv_heads] = sum(
        leaf.size for leaf in jax.tree.leaves(variables['cache'])
    )
  assert sizes[num_kv_heads] < sizes[0]


def _self_inputs(length=5):
  return _normal(0, (1, length, E)), jnp.ones((1, length), jnp.int32)


def _shared(params, names=('query', 'key', 'value', 'out')):
  return {'params': {n: params['params'][n] for n in names}}


def test_bilinear_starts_as_scaled_dot_product():
  x, seg = _self_inputs()
  params = nn.unbox(_layer('bilinear').init(jax.random.key(1), x, x, seg, seg))
  np.testing.assert_allclose(
      params['params']['score_kernel'],
      np.broadcast_to(np.eye(D) / np.sqrt(D), (H, D, D)),
  )
  np.testing.assert_allclose(
      _layer('bilinear').apply(params, x, x, seg, seg),
      _layer('softmax').apply(_shared(params), x, x, seg, seg),
      atol=1e-6,
  )


def test_unscaled_dot_product_is_softmax_without_the_scale():
  x, seg = _self_inputs()
  softmax = _layer('softmax')
  params = nn.unbox(softmax.init(jax.random.key(1), x, x, seg, seg))
  # Scaling the queries by 1/sqrt(D) undoes the missing scale.
  scaled = jax.tree.map(lambda p: p / np.sqrt(D), params['params']['query'])
  scaled_params = {'params': {**params['params'], 'query': scaled}}
  unscaled = _layer('unscaled_dot_product')
  np.testing.assert_allclose(
      unscaled.apply(scaled_params, x, x, seg, seg),
      softmax.apply(params, x, x, seg, seg),
      atol=1e-5,
  )
  assert not np.allclose(unscaled.apply(params, x, x, seg, seg),
                         softmax.apply(params, x, x, seg, seg), atol=1e-3)


def test_cosine_ignores_query_length_and_starts_at_temperature_10():
  x, seg = _self_inputs()
  layer = _layer('cosine')
  params = nn.unbox(layer.init(jax.random.key(1), x, x, seg, seg))
  np.testing.assert_allclose(
      np.exp(params['params']['log_temperature']), np.full(H, 10.0),
      rtol=1e-6,
  )
  longer = jax.tree.map(lambda p: 3.0 * p, params['params']['query'])
  longer_params = {'params': {**params['params'], 'query': longer}}
  np.testing.assert_allclose(
      layer.apply(longer_params, x, x, seg, seg),
      layer.apply(params, x, x, seg, seg),
      atol=1e-5,
  )


def test_cosine_temperature_is_capped_at_max_temperature():
  x, seg = _self_inputs()
  layer = _layer('cosine')
  params = nn.unbox(layer.init(jax.random.key(1), x, x, seg, seg))

  def run(temperature):
    log_t = jnp.full((H,), np.log(temperature), jnp.float32)
    return layer.apply(
        {'params': {**params['params'], 'log_temperature': log_t}},
        x, x, seg, seg)

  cap = attention.get('cosine').Options().max_temperature
  np.testing.assert_allclose(run(2 * cap), run(cap), atol=1e-6)
  assert not np.allclose(run(cap / 2), run(cap), atol=1e-4)


@pytest.mark.parametrize('headwise', [False, True])
def test_gated_with_its_gate_open_is_softmax(headwise):
  # sigmoid(30) is 1 in float32: the gate passes softmax attention through.
  x, seg = _self_inputs()
  layer = _layer('gated', options=gated.GatedOptions(headwise=headwise))
  params = nn.unbox(layer.init(jax.random.key(1), x, x, seg, seg))
  gate = params['params']['gate']
  assert gate['kernel'].shape == ((E, H) if headwise else (E, H, D))
  opened = {'kernel': jnp.zeros_like(gate['kernel']),
            'bias': jnp.full_like(gate['bias'], 30.0)}
  np.testing.assert_allclose(
      layer.apply({'params': {**params['params'], 'gate': opened}}, x, x,
                  seg, seg),
      _layer('softmax').apply(_shared(params), x, x, seg, seg),
      atol=1e-6,
  )
