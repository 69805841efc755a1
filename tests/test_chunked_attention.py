"""Blockwise softmax attention: chunked (exact, linear memory) and local
(a window of positions), against jax.nn with explicit masks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.attention import chunked
from attention_jax.attention import frame
from attention_jax.attention import local

E, H, D = 16, 4, 4


def _normal(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape)


def _packed(length):
  """Row 0: two packed sentences then padding; row 1: one padded sentence."""
  first = (length - 2) // 2
  seg = jnp.array([
      [1] * first + [2] * (length - 2 - first) + [0, 0],
      [1] * (length - 3) + [0] * 3,
  ], jnp.int32)
  pos = jnp.array([
      list(range(first)) + list(range(length - 2 - first)) + [0, 0],
      list(range(length - 3)) + [0] * 3,
  ], jnp.int32)
  return seg, pos


def _allowed(seg, causal, pos=None, window=None):
  """Who sees whom, from the definition, [B, 1, L, L]."""
  seg = np.asarray(seg)
  allowed = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
  if causal:
    allowed &= np.tril(np.ones((seg.shape[1],) * 2, bool))[None]
  if window is not None:
    offset = np.asarray(pos)[:, :, None] - np.asarray(pos)[:, None, :]
    allowed &= (offset >= 0 if causal else True) & (np.abs(offset) < window)
  return allowed[:, None]


@pytest.mark.parametrize('num_kv_heads', [4, 2])
@pytest.mark.parametrize('chunk_size', [4, 3, 64])  # divides 12, not, > 12
@pytest.mark.parametrize('causal', [False, True])
def test_chunked_softmax_matches_jax_nn(causal, chunk_size, num_kv_heads):
  q = _normal(0, (2, 12, H, D))
  k, v = (_normal(i, (2, 12, num_kv_heads, D)) for i in (1, 2))
  seg, _ = _packed(12)
  ours = chunked.chunked_softmax(q, k, v, seg, seg, causal=causal,
                                 chunk_size=chunk_size)
  reference = jax.nn.dot_product_attention(q, k, v,
                                           mask=_allowed(seg, causal))
  real = np.asarray(seg != 0)
  np.testing.assert_allclose(ours[real], reference[real], atol=1e-5)


@pytest.mark.parametrize('length', [12, 11])
@pytest.mark.parametrize('causal', [False, True])
def test_chunked_softmax_gradients_match_jax_nn(causal, length):
  q, k, v = (_normal(i, (2, length, H, D)) for i in range(3))
  seg, _ = _packed(length)
  # Padding queries see no key; nothing reads them.
  weights = _normal(3, (2, length, H, D)) * (seg != 0)[..., None, None]

  def loss(attend):
    return lambda q, k, v: (attend(q, k, v) * weights).sum()

  ours = jax.grad(loss(lambda q, k, v: chunked.chunked_softmax(
      q, k, v, seg, seg, causal=causal, chunk_size=4)), argnums=(0, 1, 2))
  reference = jax.grad(loss(lambda q, k, v: jax.nn.dot_product_attention(
      q, k, v, mask=_allowed(seg, causal))), argnums=(0, 1, 2))
  for got, expected in zip(ours(q, k, v), reference(q, k, v)):
    np.testing.assert_allclose(got, expected, atol=1e-5)


def _forward_backward_temp_bytes(attend, length):
  """XLA's scratch memory for the gradient of one attention call."""
  q = jnp.zeros((1, length, 1, 64))
  seg = jnp.ones((1, length), jnp.int32)
  loss = lambda q, k, v: attend(q, k, v, seg).sum()  # noqa: E731
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, q, q).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_forward_backward_memory_grows_linearly():
  def chunked_attend(q, k, v, seg):
    return chunked.chunked_softmax(q, k, v, seg, seg, causal=True,
                                   chunk_size=64)

  def quadratic_attend(q, k, v, seg):
    del seg
    return jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                        implementation='xla')

  def growth(attend):
    return (_forward_backward_temp_bytes(attend, 2048)
            / _forward_backward_temp_bytes(attend, 1024))

  # Doubling the length quadruples a score matrix and doubles a vector.
  assert growth(quadratic_attend) > 3.5
  assert growth(chunked_attend) < 2.5


def test_chunked_dropout_is_unbiased():
  q, k, v = (_normal(i, (1, 6, 2, D)) for i in range(3))
  seg = jnp.ones((1, 6), jnp.int32)
  exact = chunked.chunked_softmax(q, k, v, seg, seg, chunk_size=4)
  dropped = jax.vmap(lambda rng: chunked.chunked_softmax(
      q, k, v, seg, seg, chunk_size=4, dropout_rate=0.5, dropout_rng=rng
  ))(jax.random.split(jax.random.key(5), 4000))
  assert not np.allclose(dropped[0], exact, atol=1e-2)
  np.testing.assert_allclose(dropped.mean(0), exact, atol=0.05)


def _layer(mechanism, options, *, causal=False, **changes):
  config = frame.AttentionConfig(mechanism=mechanism, options=options,
                                 num_heads=H, head_dim=D, **changes)
  return frame.MultiHeadAttention(config, causal=causal, self_attention=True)


def test_chunked_layer_draws_attention_dropout_from_the_dropout_rng():
  x = _normal(0, (1, 6, E))
  seg = jnp.ones((1, 6), jnp.int32)
  options = chunked.ChunkedOptions(chunk_size=4)
  layer = _layer('chunked', options, dropout_rate=0.5)
  exact_layer = _layer('chunked', options, deterministic=True)
  params = nn.unbox(exact_layer.init(jax.random.key(1), x, x, seg, seg))
  run = lambda seed: layer.apply(  # noqa: E731
      params, x, x, seg, seg, rngs={'dropout': jax.random.key(seed)}
  )
  exact = exact_layer.apply(params, x, x, seg, seg)
  np.testing.assert_array_equal(run(2), run(2))
  assert not np.allclose(run(2), run(3), atol=1e-3)
  assert not np.allclose(run(2), exact, atol=1e-3)


def _band_reference(params, x, seg, pos, window, causal):
  """jax.nn attention with an explicit segment-and-window mask."""
  p = params['params']
  dense = lambda name: (  # noqa: E731
      jnp.einsum('ble,ehd->blhd', x, p[name]['kernel'])
      + p[name]['bias'][None, None]
  )
  out_BxLxHxD = jax.nn.dot_product_attention(
      dense('query'), dense('key'), dense('value'),
      mask=_allowed(seg, causal, pos, window),
  )
  return (jnp.einsum('blhd,hde->ble', out_BxLxHxD, p['out']['kernel'])
          + p['out']['bias'][None, None])


@pytest.mark.parametrize('window, chunk_size', [(3, 4), (4, 2), (1, 4)])
@pytest.mark.parametrize('causal', [False, True])
def test_local_equals_jax_nn_with_a_band_mask(causal, window, chunk_size):
  length = 23  # Long enough that only the band's key chunks are visited.
  x = _normal(0, (2, length, E))
  seg, pos = _packed(length)
  layer = _layer('local', local.LocalOptions(window_size=window,
                                             chunk_size=chunk_size),
                 causal=causal, deterministic=True)
  params = nn.unbox(layer.init(jax.random.key(1), x, x, seg, seg, pos, pos))
  real = (seg != 0)[..., None]

  def ours(params, x):
    return layer.apply(params, x, x, seg, seg, pos, pos) * real

  def reference(params, x):
    return _band_reference(params, x, seg, pos, window, causal) * real

  np.testing.assert_allclose(ours(params, x), reference(params, x), atol=1e-5)
  weights = _normal(2, x.shape)
  loss = lambda f: lambda *a: (f(*a) * weights).sum()  # noqa: E731
  got = jax.grad(loss(ours), argnums=(0, 1))(params, x)
  expected = jax.grad(loss(reference), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize('causal', [False, True])
def test_local_window_through_gradients(causal):
  window, length = 3, 16
  layer = _layer('local', local.LocalOptions(window_size=window, chunk_size=4),
                 causal=causal, deterministic=True)
  x = _normal(0, (1, length, E))
  seg = jnp.ones((1, length), jnp.int32)
  pos = jnp.arange(length, dtype=jnp.int32)[None]
  params = nn.unbox(layer.init(jax.random.key(1), x, x, seg, seg, pos, pos))
  # jacobian[i, j, e]: output i (summed over features) w.r.t. input j, e.
  jacobian = jax.jacrev(
      lambda x: layer.apply(params, x, x, seg, seg, pos, pos)[0].sum(-1)
  )(x)[:, 0]
  seen = np.abs(np.asarray(jacobian)).sum(-1) > 0
  offsets = np.arange(length)[:, None] - np.arange(length)[None, :]
  expected = (offsets >= 0) if causal else np.ones_like(seen)
  expected &= np.abs(offsets) < window
  np.testing.assert_array_equal(seen, expected)


@pytest.mark.parametrize('scheme', ['rope', 'alibi'])
def test_local_decoding_keeps_a_ring_of_window_slots(scheme):
  # Decoding keeps the latest `window` keys only; 11 steps wrap the ring of
  # 4 slots twice, and every step equals the full causal pass (score biases
  # read the positions the slots hold, not the slot order).
  window, length = 4, 11
  options = local.LocalOptions(window_size=window, chunk_size=2)
  x = _normal(0, (2, length, E))
  seg = jnp.ones((2, length), jnp.int32)
  layer = _layer('local', options, causal=True, deterministic=True,
                 position_scheme=scheme)
  params = nn.unbox(layer.init(jax.random.key(1), x, x, seg, seg))['params']
  full = layer.apply({'params': params}, x, x, seg, seg)
  decoder = _layer('local', options, causal=True, deterministic=True,
                   position_scheme=scheme, decode=True)
  _, variables = decoder.apply({'params': params}, x, x, seg, seg,
                               mutable=['cache'])
  assert variables['cache']['cached_key'].shape == (2, H, window, D)
  steps = []
  for t in range(length):
    out, variables = decoder.apply(
        {'params': params, **variables}, x[:, t:t + 1], x[:, t:t + 1],
        seg[:, t:t + 1], seg[:, t:t + 1], mutable=['cache'])
    steps.append(out)
  np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=1e-5)
