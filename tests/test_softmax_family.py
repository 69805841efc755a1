"""Softmax attention variants, grouped key/value heads and position schemes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import attention
from attention_jax.attention import positions
from attention_jax.model.config import TransformerConfig
from attention_jax.model.transformer import Transformer

import decoding_checks

E, H, D = 16, 4, 4
CFG = TransformerConfig(
    vocab_size=20, emb_dim=E, num_heads=H, qkv_dim=H * D, max_len=8,
    deterministic=True,
)
VARIANTS = ('dot_product', 'additive', 'bilinear', 'dot', 'cosine')
# 'sinusoidal' acts on embeddings, so inside attention it is no scheme.
SCHEMES = ('sinusoidal', 'rope', 'alibi', 'relative_bias')


def _module(name, causal=False, **changes):
  return attention.get(name)(cfg=CFG.replace(**changes), causal=causal)


def _inputs(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape)


def _positions(length, batch=1):
  return jnp.broadcast_to(jnp.arange(length), (batch, length))


def test_grouped_query_with_all_heads_equals_flax_multi_head():
  x_q, x_kv = _inputs(0, (2, 5, E)), _inputs(1, (2, 7, E))
  q_seg, kv_seg = jnp.ones((2, 5), jnp.int32), jnp.ones((2, 7), jnp.int32)
  ours = _module('dot_product', num_kv_heads=H)
  params = nn.unbox(ours.init(jax.random.key(2), x_q, x_kv, q_seg, kv_seg))
  reference = nn.MultiHeadDotProductAttention(
      num_heads=H, qkv_features=H * D, deterministic=True
  )
  np.testing.assert_allclose(
      ours.apply(params, x_q, x_kv, q_seg, kv_seg),
      reference.apply(params, x_q, x_kv),
      atol=1e-5,
  )


@pytest.mark.parametrize('num_kv_heads', [1, 2])
def test_grouped_query_matches_jax_nn(num_kv_heads):
  x_q, x_kv = _inputs(0, (2, 5, E)), _inputs(1, (2, 7, E))
  q_seg, kv_seg = jnp.ones((2, 5), jnp.int32), jnp.ones((2, 7), jnp.int32)
  module = _module('dot_product', num_kv_heads=num_kv_heads)
  params = nn.unbox(module.init(jax.random.key(2), x_q, x_kv, q_seg, kv_seg))
  p = params['params']
  dense = lambda name, x: (  # noqa: E731
      jnp.einsum('ble,ehd->blhd', x, p[name]['kernel']) + p[name]['bias']
  )
  # jax.nn groups query heads onto key/value heads on its own.
  out_BxQxHxD = jax.nn.dot_product_attention(
      dense('query', x_q), dense('key', x_kv), dense('value', x_kv)
  )
  expected = (
      jnp.einsum('bqhd,hde->bqe', out_BxQxHxD, p['out']['kernel'])
      + p['out']['bias']
  )
  np.testing.assert_allclose(
      module.apply(params, x_q, x_kv, q_seg, kv_seg), expected, atol=1e-5
  )


@pytest.mark.parametrize('num_kv_heads', [1, 2])
def test_grouped_query_shrinks_projections_and_cache(num_kv_heads):
  x = jnp.zeros((3, 6, E))
  seg = jnp.ones((3, 6), jnp.int32)
  sizes = {}
  for kv_heads in (0, num_kv_heads):
    decoder = _module('dot_product', causal=True, decode=True,
                      num_kv_heads=kv_heads)
    variables = nn.unbox(decoder.init(jax.random.key(0), x, x, seg, seg))
    assert variables['params']['key']['kernel'].shape == (
        E, kv_heads or H, D
    )
    assert variables['cache']['cached_key'].shape == (3, 6, kv_heads or H, D)
    sizes[kv_heads] = sum(
        leaf.size for leaf in jax.tree.leaves(variables['cache'])
    )
  assert sizes[num_kv_heads] < sizes[0]


def _packed_row():
  # Two packed sentences and padding; positions restart in each sentence.
  seg = jnp.array([[1, 1, 1, 2, 2, 0, 0]])
  pos = jnp.array([[0, 1, 2, 0, 1, 0, 0]])
  return seg, pos


@pytest.mark.parametrize('causal', [False, True])
@pytest.mark.parametrize('scheme', SCHEMES)
@pytest.mark.parametrize('name', VARIANTS)
def test_padding_and_other_segments_do_not_leak(name, scheme, causal):
  module = _module(name, causal=causal, position_scheme=scheme)
  seg, pos = _packed_row()
  x = _inputs(0, (1, 7, E))
  params = nn.unbox(module.init(jax.random.key(1), x, x, seg, seg, pos, pos))
  run = lambda x: module.apply(params, x, x, seg, seg, pos, pos)  # noqa: E731
  out = run(x)
  noise = _inputs(2, (1, 7, E))
  first_changed = run(jnp.where(seg[..., None] == 2, x, noise))
  second_changed = run(jnp.where(seg[..., None] == 1, x, noise))
  np.testing.assert_allclose(out[0, 3:5], first_changed[0, 3:5], atol=1e-5)
  np.testing.assert_allclose(out[0, :3], second_changed[0, :3], atol=1e-5)
  assert not np.allclose(out[0, 3:5], second_changed[0, 3:5], atol=1e-3)
  # The second sentence alone, unpacked, sees the same positions and keys.
  alone_x = x[:, 3:5]
  alone = module.apply(
      params, alone_x, alone_x, seg[:, :2], seg[:, :2], pos[:, :2],
      pos[:, :2],
  )
  np.testing.assert_allclose(out[0, 3:5], alone[0], atol=1e-5)


@pytest.mark.parametrize('scheme', SCHEMES)
@pytest.mark.parametrize('name', VARIANTS)
def test_causal_through_gradients(name, scheme):
  module = _module(name, causal=True, position_scheme=scheme)
  x = _inputs(0, (1, 5, E))
  seg, pos = jnp.ones((1, 5), jnp.int32), _positions(5)
  params = nn.unbox(module.init(jax.random.key(1), x, x, seg, seg, pos, pos))
  for i in range(5):
    grad = jax.grad(
        lambda x: module.apply(params, x, x, seg, seg, pos, pos)[0, i].sum()
    )(x)
    per_position = np.abs(np.asarray(grad[0])).sum(-1)
    assert np.all(per_position[i + 1 :] == 0), (i, per_position)
    assert np.all(per_position[: i + 1] > 0), (i, per_position)


def _decode_self_attention(module, params, x_BxLxE):
  """Feeds x one step at a time through a cache; returns the stacked outputs."""
  batch, length = x_BxLxE.shape[:2]
  seg = jnp.ones((batch, length), jnp.int32)
  _, variables = module.apply(
      {'params': params}, x_BxLxE, x_BxLxE, seg, seg, mutable=['cache']
  )
  steps = []
  for t in range(length):
    x_t = x_BxLxE[:, t : t + 1]
    pos_t = jnp.full((batch, 1), t)
    out, variables = module.apply(
        {'params': params, 'cache': variables['cache']}, x_t, x_t,
        seg[:, :1], seg[:, :1], pos_t, pos_t, mutable=['cache'],
    )
    steps.append(out)
  return jnp.concatenate(steps, axis=1)


@pytest.mark.parametrize(
    'name, scheme, num_kv_heads',
    [(n, s, 0) for n in VARIANTS for s in SCHEMES]
    + [('dot_product', 'rope', 1), ('additive', 'relative_bias', 2),
       ('cosine', 'alibi', 2)],
)
def test_cached_decoding_equals_full_causal_forward(name, scheme,
                                                    num_kv_heads):
  changes = dict(position_scheme=scheme, num_kv_heads=num_kv_heads)
  full_module = _module(name, causal=True, **changes)
  decoder = _module(name, causal=True, decode=True, **changes)
  x = _inputs(0, (2, 6, E))
  seg, pos = jnp.ones((2, 6), jnp.int32), _positions(6, 2)
  params = nn.unbox(full_module.init(jax.random.key(1), x, x, seg, seg, pos, pos))
  full = full_module.apply(params, x, x, seg, seg, pos, pos)
  steps = _decode_self_attention(decoder, params['params'], x)
  np.testing.assert_allclose(steps, full, atol=1e-5)


@pytest.mark.parametrize('name', VARIANTS)
def test_cached_cross_attention_equals_full(name):
  module = _module(name)
  decoder = _module(name, decode=True)
  x_q, memory = _inputs(0, (2, 4, E)), _inputs(1, (2, 6, E))
  q_seg = jnp.ones((2, 4), jnp.int32)
  kv_seg = jnp.array([[1] * 6, [1, 1, 1, 0, 0, 0]])
  params = nn.unbox(module.init(jax.random.key(2), x_q, memory, q_seg, kv_seg))
  full = module.apply(params, x_q, memory, q_seg, kv_seg)
  _, variables = decoder.apply(
      params, x_q, memory, q_seg, kv_seg, mutable=['cache']
  )
  for t in range(4):
    # The memory argument is ignored once cached: pass garbage to prove it.
    step, _ = decoder.apply(
        {**params, 'cache': variables['cache']}, x_q[:, t : t + 1],
        jnp.zeros_like(memory), q_seg[:, :1], kv_seg, mutable=['cache'],
    )
    np.testing.assert_allclose(step[:, 0], full[:, t], atol=1e-5)


def test_position_schemes_leave_cross_attention_alone():
  x_q, memory = _inputs(0, (1, 4, E)), _inputs(1, (1, 6, E))
  q_seg, kv_seg = jnp.ones((1, 4), jnp.int32), jnp.ones((1, 6), jnp.int32)
  q_pos, kv_pos = _positions(4), _positions(6)
  plain = _module('dot_product')
  params = nn.unbox(plain.init(jax.random.key(2), x_q, memory, q_seg, kv_seg))
  expected = plain.apply(params, x_q, memory, q_seg, kv_seg, q_pos, kv_pos)
  for scheme in ('rope', 'alibi'):
    out = _module('dot_product', position_scheme=scheme).apply(
        params, x_q, memory, q_seg, kv_seg, q_pos, kv_pos
    )
    np.testing.assert_allclose(out, expected, atol=1e-6)
  # As self-attention, the same scheme does change the output.
  self_rope = _module('dot_product', position_scheme='rope').apply(
      params, memory, memory, kv_seg, kv_seg, kv_pos, kv_pos
  )
  self_plain = plain.apply(params, memory, memory, kv_seg, kv_seg)
  assert not np.allclose(self_rope, self_plain, atol=1e-3)


# Rotations cancel in dot products and cosines only; with additive or
# bilinear scores rotated queries and keys act as absolute positions.
@pytest.mark.parametrize('name', ['dot_product', 'dot', 'cosine'])
def test_rope_depends_only_on_position_offsets(name):
  module = _module(name, position_scheme='rope')
  x = _inputs(0, (1, 6, E))
  seg, pos = jnp.ones((1, 6), jnp.int32), _positions(6)
  params = nn.unbox(module.init(jax.random.key(1), x, x, seg, seg, pos, pos))
  run = lambda p: module.apply(params, x, x, seg, seg, p, p)  # noqa: E731
  np.testing.assert_allclose(run(pos + 37), run(pos), atol=1e-4)
  assert not np.allclose(run(2 * pos), run(pos), atol=1e-3)


def test_rope_rotates_pairs_by_position_angle():
  x = _inputs(0, (1, 3, 1, 4))
  rotated = positions.rotate(x, jnp.array([[0, 1, 5]]))
  np.testing.assert_allclose(rotated[0, 0], x[0, 0], atol=1e-6)
  # Channels (0, 2) rotate at frequency 1, channels (1, 3) at 1/100.
  for t, angle in ((1, 1.0), (2, 5.0)):
    a, b = x[0, t, 0, 0], x[0, t, 0, 2]
    np.testing.assert_allclose(
        [rotated[0, t, 0, 0], rotated[0, t, 0, 2]],
        [a * np.cos(angle) - b * np.sin(angle),
         b * np.cos(angle) + a * np.sin(angle)],
        atol=1e-5,
    )
  a, b = x[0, 2, 0, 1], x[0, 2, 0, 3]
  np.testing.assert_allclose(
      rotated[0, 2, 0, 1], a * np.cos(0.05) - b * np.sin(0.05), atol=1e-5
  )


def test_alibi_slopes_follow_the_paper():
  np.testing.assert_allclose(
      positions.alibi_slopes(8), [2.0**-k for k in range(1, 9)]
  )
  # 6 heads: the 4-head sequence, then every other slope of the 8-head one.
  np.testing.assert_allclose(
      positions.alibi_slopes(6),
      [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3],
  )


def test_alibi_bias_penalises_distance_per_head():
  bias = positions.alibi_bias(jnp.array([[3]]), jnp.array([[0, 3, 5]]), 2)
  # Slopes for 2 heads are 1/16 and 1/256.
  np.testing.assert_allclose(
      bias[0, :, 0],
      [[-3 / 16, 0, -2 / 16], [-3 / 256, 0, -2 / 256]],
      rtol=1e-6,
  )


@pytest.mark.parametrize(
    'relative, bidirectional, bucket',
    [
        # 32 buckets, 128 max distance; relative = key - query position.
        (0, True, 0),
        (-1, True, 1),
        (-7, True, 7),
        (1, True, 17),
        (-20, True, 10),  # 8 + floor(8 * log(20/8) / log(128/8)) = 8 + 2.
        (20, True, 26),  # 16 + the same.
        (-128, True, 15),
        (-1000, True, 15),
        (-15, False, 15),
        (-20, False, 17),  # 16 + floor(16 * log(20/16) / log(128/16)) = 17.
        (5, False, 0),
        (-1000, False, 31),
    ],
)
def test_relative_position_bucket(relative, bidirectional, bucket):
  got = positions.relative_position_bucket(
      jnp.array(relative), bidirectional, num_buckets=32, max_distance=128
  )
  assert int(got) == bucket


def test_relative_bias_table_is_learned_per_head_in_self_attention_only():
  module = _module('dot_product', position_scheme='relative_bias')
  x, memory = _inputs(0, (1, 4, E)), _inputs(1, (1, 6, E))
  seg4, seg6 = jnp.ones((1, 4), jnp.int32), jnp.ones((1, 6), jnp.int32)
  self_params = nn.unbox(module.init(jax.random.key(2), x, x, seg4, seg4))['params']
  assert self_params['relative_bias']['embedding'].shape == (32, H)
  cross_params = nn.unbox(module.init(jax.random.key(2), x, memory, seg4, seg6))
  assert 'relative_bias' not in cross_params['params']


@pytest.mark.parametrize('causal', [False, True])
def test_relative_bias_buckets_are_causal_only_in_the_decoder(causal):
  module = _module('dot_product', causal=causal,
                   position_scheme='relative_bias')
  x = _inputs(0, (1, 12, E))
  seg = jnp.ones((1, 12), jnp.int32)
  params = nn.unbox(module.init(jax.random.key(1), x, x, seg, seg))['params']
  # Each bucket's bias is its own id, so the bias reveals the bucket.
  table = jnp.broadcast_to(jnp.arange(32.0)[:, None], (32, H))
  params = {**params, 'relative_bias': {'embedding': table}}
  _, state = module.apply(
      {'params': params}, x, x, seg, seg, capture_intermediates=True,
      mutable=['intermediates'],
  )
  (bias,) = state['intermediates']['relative_bias']['__call__']
  # Key 11 before the query: causal buckets keep offsets below 16 exact;
  # bidirectional ones only below 8, then 8 + floor(8 log(11/8) / log 16).
  assert bias[0, 0, 11, 0] == (11 if causal else 8)
  if not causal:
    assert bias[0, 0, 0, 3] == 16 + 3  # Keys after the query: own buckets.


def _reference_scores(name, q_QxHxD, k_KxHxD, params):
  """The published score formula, written out with numpy loops."""
  logits = np.zeros((H, len(q_QxHxD), len(k_KxHxD)))
  for h in range(H):
    for i, q in enumerate(q_QxHxD[:, h]):
      for j, k in enumerate(k_KxHxD[:, h]):
        if name == 'dot_product':
          logits[h, i, j] = q @ k / np.sqrt(D)
        elif name == 'dot':
          logits[h, i, j] = q @ k
        elif name == 'additive':
          logits[h, i, j] = params['score_vector'][h] @ np.tanh(q + k)
        elif name == 'bilinear':
          logits[h, i, j] = q @ params['score_kernel'][h] @ k
        elif name == 'cosine':
          temperature = min(np.exp(params['log_temperature'][h]), 100.0)
          logits[h, i, j] = temperature * (
              q @ k / np.linalg.norm(q) / np.linalg.norm(k)
          )
  return logits


@pytest.mark.parametrize('name', VARIANTS)
def test_forward_matches_published_score_formula(name):
  x_q, x_kv = _inputs(0, (1, 3, E)), _inputs(1, (1, 4, E))
  q_seg, kv_seg = jnp.ones((1, 3), jnp.int32), jnp.array([[1, 1, 1, 0]])
  module = _module(name)
  params = nn.unbox(module.init(jax.random.key(2), x_q, x_kv, q_seg, kv_seg))
  p = jax.tree.map(np.asarray, params['params'])
  # Move score parameters away from their structured initial values; the
  # cosine temperature of head 0 goes past its cap of 100.
  if name == 'bilinear':
    p['score_kernel'] = np.asarray(_inputs(3, (H, D, D)))
  if name == 'cosine':
    p['log_temperature'] = np.log([200.0, 0.5, 2.0, 30.0])
  dense = lambda n, x: (  # noqa: E731
      np.einsum('le,ehd->lhd', x[0], p[n]['kernel']) + p[n]['bias']
  )
  q, k, v = dense('query', x_q), dense('key', x_kv), dense('value', x_kv)
  logits_HxQxK = _reference_scores(name, q, k, p)
  logits_HxQxK[:, :, 3] = -np.inf  # The padding key.
  probs = np.exp(logits_HxQxK - logits_HxQxK.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  attended_QxHxD = np.einsum('hqk,khd->qhd', probs, v)
  expected = (
      np.einsum('qhd,hde->qe', attended_QxHxD, p['out']['kernel'])
      + p['out']['bias']
  )
  out = module.apply({'params': p}, x_q, x_kv, q_seg, kv_seg)
  np.testing.assert_allclose(out[0], expected, rtol=1e-4, atol=1e-5)


def test_bilinear_starts_as_scaled_dot_product():
  x = _inputs(0, (1, 5, E))
  seg = jnp.ones((1, 5), jnp.int32)
  params = nn.unbox(_module('bilinear').init(jax.random.key(1), x, x, seg, seg))
  np.testing.assert_allclose(
      params['params']['score_kernel'],
      np.broadcast_to(np.eye(D) / np.sqrt(D), (H, D, D)),
  )
  shared = {'params': {n: params['params'][n]
                       for n in ('query', 'key', 'value', 'out')}}
  np.testing.assert_allclose(
      _module('bilinear').apply(params, x, x, seg, seg),
      _module('dot_product').apply(shared, x, x, seg, seg),
      atol=1e-6,
  )


def test_dot_is_dot_product_without_scaling():
  x = _inputs(0, (1, 5, E))
  seg = jnp.ones((1, 5), jnp.int32)
  params = nn.unbox(_module('dot_product').init(jax.random.key(1), x, x, seg, seg))
  # Scaling the queries by 1/sqrt(D) undoes the missing scale.
  scaled = jax.tree.map(lambda p: p / np.sqrt(D), params['params']['query'])
  scaled_params = {'params': {**params['params'], 'query': scaled}}
  np.testing.assert_allclose(
      _module('dot').apply(scaled_params, x, x, seg, seg),
      _module('dot_product').apply(params, x, x, seg, seg),
      atol=1e-5,
  )
  assert not np.allclose(
      _module('dot').apply(params, x, x, seg, seg),
      _module('dot_product').apply(params, x, x, seg, seg),
      atol=1e-3,
  )


def test_cosine_ignores_query_length_and_starts_at_temperature_10():
  x = _inputs(0, (1, 5, E))
  seg = jnp.ones((1, 5), jnp.int32)
  module = _module('cosine')
  params = nn.unbox(module.init(jax.random.key(1), x, x, seg, seg))
  np.testing.assert_allclose(
      np.exp(params['params']['log_temperature']), np.full(H, 10.0),
      rtol=1e-6,
  )
  longer = jax.tree.map(lambda p: 3.0 * p, params['params']['query'])
  longer_params = {'params': {**params['params'], 'query': longer}}
  np.testing.assert_allclose(
      module.apply(longer_params, x, x, seg, seg),
      module.apply(params, x, x, seg, seg),
      atol=1e-5,
  )


def test_unknown_position_scheme_names_valid_choices():
  x = jnp.zeros((1, 3, E))
  seg = jnp.ones((1, 3), jnp.int32)
  with pytest.raises(ValueError, match="'rotary'.*valid choices.*rope"):
    nn.unbox(_module('dot_product', position_scheme='rotary').init(
        jax.random.key(0), x, x, seg, seg
    ))
  tokens = jnp.ones((1, 3), jnp.int32)
  with pytest.raises(ValueError, match='valid choices.*learned'):
    nn.unbox(Transformer(CFG.replace(position_scheme='rotary')).init(
        jax.random.key(0), tokens, tokens
    ))


def test_learned_positions_are_a_table_over_max_len():
  tokens = jnp.array([[3, 4, 5, 1]])
  model = Transformer(CFG.replace(position_scheme='learned',
                                  num_encoder_layers=1, num_decoder_layers=1))
  params = nn.unbox(model.init(jax.random.key(0), tokens, tokens))['params']
  assert params['position_embed']['embedding'].shape == (CFG.max_len, E)
  sinusoidal = Transformer(CFG.replace(num_encoder_layers=1,
                                       num_decoder_layers=1))
  assert 'position_embed' not in nn.unbox(sinusoidal.init(
      jax.random.key(0), tokens, tokens
  ))['params']


def _encode_permuted_and_forward(scheme, params_fn=lambda p: p):
  """Encodings of a shuffled source, put back in order, and of the source."""
  model = Transformer(CFG.replace(position_scheme=scheme,
                                  num_encoder_layers=1, num_decoder_layers=1))
  inputs = jnp.array([[3, 4, 5, 6, 7]])
  params = params_fn(nn.unbox(model.init(jax.random.key(0), inputs, inputs))['params'])
  encode = lambda i: model.apply(  # noqa: E731
      {'params': params}, i, method=Transformer.encode
  )
  # Not a reversal: reversing keeps every |i - j|, which bidirectional
  # ALiBi cannot tell apart.
  perm = np.array([2, 0, 4, 1, 3])
  return encode(inputs[:, perm])[:, np.argsort(perm)], encode(inputs)


def test_encoder_without_positions_is_permutation_equivariant():
  # The control for the test below: a zeroed learned table is no position.
  def zero_table(params):
    return {**params,
            'position_embed': {'embedding': jnp.zeros((CFG.max_len, E))}}

  permuted_back, forward = _encode_permuted_and_forward('learned', zero_table)
  np.testing.assert_allclose(permuted_back, forward, atol=1e-5)


@pytest.mark.parametrize('scheme', ['rope', 'alibi', 'relative_bias'])
def test_encoder_self_attention_sees_positions(scheme):
  permuted_back, forward = _encode_permuted_and_forward(scheme)
  assert not np.allclose(permuted_back, forward, atol=1e-3)


@pytest.mark.parametrize(
    'name, scheme',
    [('dot_product', 'learned'), ('additive', 'rope'),
     ('cosine', 'alibi'), ('bilinear', 'relative_bias')],
)
def test_transformer_cached_decoding_equals_full_forward(name, scheme):
  decoding_checks.assert_cached_decoding_equals_full_forward(
      CFG.replace(attention=name, position_scheme=scheme, mlp_dim=32,
                  num_encoder_layers=1, num_decoder_layers=2)
  )

