"""Chunked exact attention, local attention and the fused-kernel dispatch."""

import functools
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import attention
from attention_jax.attention import chunked
from attention_jax.attention import kernels
from attention_jax.attention import local
from attention_jax.attention import masks
from attention_jax.attention.dot_product import scaled_dot_product
from attention_jax.model.config import TransformerConfig

E, H, D = 16, 4, 4
CFG = TransformerConfig(
    vocab_size=20, emb_dim=E, num_heads=H, qkv_dim=H * D, max_len=11,
    chunk_size=4, window_size=3, deterministic=True,
)


def _inputs(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape)


def _packed(length):
  """Row 0: two packed sentences then padding; row 1: one padded sentence."""
  first = (length - 2) // 2
  seg = jnp.array([
      [1] * first + [2] * (length - 2 - first) + [0, 0],
      [1] * (length - 3) + [0] * 3,
  ])
  pos = jnp.array([
      list(range(first)) + list(range(length - 2 - first)) + [0, 0],
      list(range(length - 3)) + [0] * 3,
  ])
  return seg, pos


@pytest.mark.parametrize('num_kv_heads', [4, 2])
@pytest.mark.parametrize('chunk_size', [4, 3, 64])  # divides 12, not, > 12
@pytest.mark.parametrize('causal', [False, True])
def test_chunked_function_matches_jax_nn(causal, chunk_size, num_kv_heads):
  q = _inputs(0, (2, 12, H, D))
  k, v = (_inputs(i, (2, 12, num_kv_heads, D)) for i in (1, 2))
  seg, _ = _packed(12)
  mask = masks.segment_mask(seg, seg)
  if causal:
    mask &= masks.causal_mask(12, 12)
  real = np.asarray(seg != 0)
  ours = chunked.chunked_dot_product(
      q, k, v, seg, seg, causal=causal, chunk_size=chunk_size
  )
  reference = jax.nn.dot_product_attention(q, k, v, mask=mask)
  np.testing.assert_allclose(ours[real], reference[real], atol=1e-5)


@pytest.mark.parametrize('length', [12, 11])
@pytest.mark.parametrize('causal', [False, True])
def test_chunked_gradients_match_baseline(causal, length):
  q, k, v = (_inputs(i, (2, length, H, D)) for i in range(3))
  seg, _ = _packed(length)
  mask = masks.segment_mask(seg, seg)
  if causal:
    mask &= masks.causal_mask(length, length)
  weights = _inputs(3, (2, length, H, D))

  def loss(attend):
    return lambda q, k, v: (attend(q, k, v) * weights).sum()

  ours = jax.grad(loss(lambda q, k, v: chunked.chunked_dot_product(
      q, k, v, seg, seg, causal=causal, chunk_size=4)), argnums=(0, 1, 2))
  base = jax.grad(loss(lambda q, k, v: scaled_dot_product(q, k, v, mask)),
                  argnums=(0, 1, 2))
  for got, expected in zip(ours(q, k, v), base(q, k, v)):
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
    return chunked.chunked_dot_product(q, k, v, seg, seg, causal=True,
                                       chunk_size=64)

  def baseline_attend(q, k, v, seg):
    length = seg.shape[1]
    return scaled_dot_product(q, k, v, masks.causal_mask(length, length))

  def growth(attend):
    return (_forward_backward_temp_bytes(attend, 2048)
            / _forward_backward_temp_bytes(attend, 1024))

  # Doubling the length quadruples a score matrix and doubles a vector.
  assert growth(baseline_attend) > 3.5
  assert growth(chunked_attend) < 2.5


def test_chunked_dropout_is_unbiased():
  q, k, v = (_inputs(i, (1, 6, 2, D)) for i in range(3))
  seg = jnp.ones((1, 6), jnp.int32)
  exact = chunked.chunked_dot_product(q, k, v, seg, seg, chunk_size=4)
  dropped = jax.vmap(lambda rng: chunked.chunked_dot_product(
      q, k, v, seg, seg, chunk_size=4, dropout_rate=0.5, dropout_rng=rng
  ))(jax.random.split(jax.random.key(5), 4000))
  assert not np.allclose(dropped[0], exact, atol=1e-2)
  np.testing.assert_allclose(dropped.mean(0), exact, atol=0.05)


def _module(name, causal=False, **changes):
  return attention.get(name)(cfg=CFG.replace(**changes), causal=causal)


@pytest.mark.parametrize('scheme', ['sinusoidal', 'rope', 'alibi',
                                    'relative_bias'])
@pytest.mark.parametrize('length', [8, 11])
@pytest.mark.parametrize('causal', [False, True])
def test_chunked_module_equals_baseline(causal, length, scheme):
  x = _inputs(0, (2, length, E))
  seg, pos = _packed(length)
  base = _module('dot_product', causal, position_scheme=scheme, num_kv_heads=2)
  ours = _module('chunked', causal, position_scheme=scheme, num_kv_heads=2)
  params = nn.unbox(base.init(jax.random.key(1), x, x, seg, seg, pos, pos))
  assert jax.tree.structure(params) == jax.tree.structure(
      nn.unbox(ours.init(jax.random.key(1), x, x, seg, seg, pos, pos))
  )
  weights = _inputs(2, (2, length, E)) * (seg != 0)[..., None]

  def loss(module):
    return lambda params, x: (
        module.apply(params, x, x, seg, seg, pos, pos) * weights
    ).sum()

  np.testing.assert_allclose(loss(ours)(params, x), loss(base)(params, x),
                             rtol=1e-5)
  got = jax.grad(loss(ours), argnums=(0, 1))(params, x)
  expected = jax.grad(loss(base), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_chunked_cross_attention_equals_baseline():
  x_q, memory = _inputs(0, (2, 5, E)), _inputs(1, (2, 9, E))
  q_seg = jnp.array([[1] * 5, [1, 1, 1, 0, 0]])
  kv_seg = jnp.array([[1] * 9, [1] * 6 + [0] * 3])
  base, ours = _module('dot_product'), _module('chunked')
  params = nn.unbox(base.init(jax.random.key(2), x_q, memory, q_seg, kv_seg))
  real = np.asarray(q_seg != 0)
  np.testing.assert_allclose(
      ours.apply(params, x_q, memory, q_seg, kv_seg)[real],
      base.apply(params, x_q, memory, q_seg, kv_seg)[real],
      atol=1e-5,
  )


def test_chunked_module_takes_attention_dropout_rng():
  x = _inputs(0, (1, 6, E))
  seg = jnp.ones((1, 6), jnp.int32)
  module = _module('chunked', deterministic=False, dropout_rate=0.0,
                   attention_dropout_rate=0.5)
  params = nn.unbox(module.init(jax.random.key(1), x, x, seg, seg))
  run = lambda seed: module.apply(  # noqa: E731
      params, x, x, seg, seg, rngs={'dropout': jax.random.key(seed)}
  )
  exact = _module('chunked').apply(params, x, x, seg, seg)
  np.testing.assert_array_equal(run(2), run(2))
  assert not np.allclose(run(2), run(3), atol=1e-3)
  assert not np.allclose(run(2), exact, atol=1e-3)


def _decode_self_attention(module, params, x_BxLxE):
  """Feeds x one step at a time through a cache; returns the stacked outputs."""
  batch, length = x_BxLxE.shape[:2]
  seg = jnp.ones((batch, length), jnp.int32)
  _, variables = module.apply(
      {'params': params}, x_BxLxE, x_BxLxE, seg, seg, mutable=['cache']
  )
  step = jax.jit(functools.partial(module.apply, mutable=['cache']))
  steps = []
  for t in range(length):
    x_t = x_BxLxE[:, t : t + 1]
    pos_t = jnp.full((batch, 1), t)
    out, variables = step(
        {'params': params, 'cache': variables['cache']}, x_t, x_t,
        seg[:, :1], seg[:, :1], pos_t, pos_t,
    )
    steps.append(out)
  return jnp.concatenate(steps, axis=1)


@pytest.mark.parametrize('name', ['chunked', 'local'])
@pytest.mark.parametrize('scheme', ['sinusoidal', 'rope', 'relative_bias'])
def test_cached_decoding_equals_full_causal_forward(name, scheme):
  full_module = _module(name, causal=True, position_scheme=scheme)
  decoder = _module(name, causal=True, decode=True, position_scheme=scheme)
  x = _inputs(0, (2, 11, E))  # 11 is not a multiple of the chunk size.
  seg = jnp.ones((2, 11), jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(11), (2, 11))
  params = nn.unbox(full_module.init(jax.random.key(1), x, x, seg, seg, pos, pos))
  full = full_module.apply(params, x, x, seg, seg, pos, pos)
  steps = _decode_self_attention(decoder, params['params'], x)
  np.testing.assert_allclose(steps, full, atol=1e-5)


def _band_reference(params, x, seg, pos, window, causal):
  """jax.nn attention with an explicit segment-and-window mask."""
  p = params['params']
  dense = lambda name: (  # noqa: E731
      jnp.einsum('ble,ehd->blhd', x, p[name]['kernel']) + p[name]['bias']
  )
  mask = masks.segment_mask(seg, seg) & local.window_mask(
      pos, pos, window, causal
  )
  out_BxLxHxD = jax.nn.dot_product_attention(
      dense('query'), dense('key'), dense('value'), mask=mask
  )
  return (jnp.einsum('blhd,hde->ble', out_BxLxHxD, p['out']['kernel'])
          + p['out']['bias'])


@pytest.mark.parametrize('window, chunk_size', [(3, 4), (4, 2), (1, 4)])
@pytest.mark.parametrize('causal', [False, True])
def test_local_equals_baseline_with_band_mask(causal, window, chunk_size):
  length = 23  # Long enough that only the band's key chunks are visited.
  x = _inputs(0, (2, length, E))
  seg, pos = _packed(length)
  module = _module('local', causal, window_size=window, chunk_size=chunk_size)
  params = nn.unbox(module.init(jax.random.key(1), x, x, seg, seg, pos, pos))
  real = (seg != 0)[..., None]

  def ours(params, x):
    return module.apply(params, x, x, seg, seg, pos, pos) * real

  def reference(params, x):
    return _band_reference(params, x, seg, pos, window, causal) * real

  np.testing.assert_allclose(ours(params, x), reference(params, x), atol=1e-5)
  weights = _inputs(2, x.shape)
  loss = lambda f: lambda *a: (f(*a) * weights).sum()  # noqa: E731
  got = jax.grad(loss(ours), argnums=(0, 1))(params, x)
  expected = jax.grad(loss(reference), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize('causal', [False, True])
def test_local_window_through_gradients(causal):
  window, length = 3, 16
  module = _module('local', causal)
  x = _inputs(0, (1, length, E))
  seg = jnp.ones((1, length), jnp.int32)
  pos = jnp.arange(length)[None]
  params = nn.unbox(module.init(jax.random.key(1), x, x, seg, seg, pos, pos))
  # jacobian[i, j, e]: output i (summed over features) w.r.t. input j, e.
  jacobian = jax.jacrev(
      lambda x: module.apply(params, x, x, seg, seg, pos, pos)[0].sum(-1)
  )(x)[:, 0]
  seen = np.abs(np.asarray(jacobian)).sum(-1) > 0
  offsets = np.arange(length)[:, None] - np.arange(length)[None, :]
  expected = (offsets >= 0) if causal else np.ones_like(seen)
  expected &= np.abs(offsets) < window
  np.testing.assert_array_equal(seen, expected)


def test_variants_are_registered_and_causal():
  for name in ('chunked', 'local'):
    cls = attention.get(name)
    assert cls.can_be_causal and cls.forms_scores


SIMULATED = [
    # requested, platform, dtype, head_dim, q_len, kv_len, dropout, bias,
    # segment ids -> implementation
    ('auto', 'cpu', 'float32', 64, 128, 128, False, False, True, 'xla'),
    ('auto', 'gpu', 'bfloat16', 64, 128, 128, False, True, False, 'cudnn'),
    ('auto', 'gpu', 'float32', 64, 128, 128, False, False, True, 'xla'),
    ('auto', 'gpu', 'bfloat16', 64, 128, 128, True, False, True, 'xla'),
    ('cudnn', 'gpu', 'float16', 12, 128, 128, False, False, True, 'xla'),
    ('cudnn', 'gpu', 'float16', 256, 128, 128, False, False, True, 'xla'),
    ('cudnn', 'gpu', 'bfloat16', 64, 1, 256, False, False, True, 'xla'),
    ('cudnn', 'rocm', 'bfloat16', 64, 128, 128, False, False, True, 'xla'),
    ('cudnn', 'tpu', 'bfloat16', 64, 128, 128, False, False, True, 'xla'),
    ('auto', 'tpu', 'float32', 64, 256, 512, False, True, True, 'pallas'),
    ('pallas', 'tpu', 'bfloat16', 256, 128, 128, False, False, True, 'pallas'),
    ('pallas', 'tpu', 'bfloat16', 192, 128, 128, False, False, True, 'xla'),
    ('pallas', 'tpu', 'float32', 64, 100, 128, False, False, True, 'xla'),
    ('pallas', 'tpu', 'float32', 64, 128, 128, True, False, True, 'xla'),
    ('pallas', 'tpu', 'float32', 64, 128, 128, False, False, False, 'xla'),
    ('pallas', 'gpu', 'bfloat16', 64, 128, 128, False, False, True, 'xla'),
    ('xla', 'gpu', 'bfloat16', 64, 128, 128, False, False, True, 'xla'),
]


@pytest.mark.parametrize('case', SIMULATED)
def test_kernel_decision_table(case):
  *facts, has_segment_ids, expected = case
  implementation, reason = kernels.select_implementation(
      *facts, has_segment_ids=has_segment_ids
  )
  assert implementation == expected
  # A reason is given exactly when the request is not honoured as asked.
  honoured = implementation == facts[0] or (
      facts[0] == 'auto' and implementation != 'xla'
  )
  assert (reason is None) == honoured, reason


def test_unknown_implementation_names_the_choices():
  with pytest.raises(ValueError, match='valid choices are: auto, xla, cudnn'):
    kernels.select_implementation('flash', 'gpu', 'bfloat16', 64, 128, 128,
                                  False, False)


@pytest.mark.parametrize('requested, level', [('cudnn', logging.WARNING),
                                              ('pallas', logging.WARNING),
                                              ('auto', logging.INFO)])
def test_fallback_on_cpu_logs_once(requested, level, caplog, monkeypatch):
  monkeypatch.setattr(kernels, '_logged_reasons', set())
  q = jnp.zeros((1, 128, H, D))
  with caplog.at_level(logging.INFO, logger='absl'):
    for _ in range(3):
      assert kernels.resolve(requested, q, q, has_dropout=False,
                             has_bias=False, has_segment_ids=True) == 'xla'
  lines = [r for r in caplog.records if 'Attention implementation' in r.message]
  assert len(lines) == 1 and lines[0].levelno == level
  assert 'cpu' in lines[0].message
