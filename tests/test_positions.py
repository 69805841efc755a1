"""Position schemes: their formulas, and where in the model they act."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import attention
from attention_jax.attention import frame
from attention_jax.attention import positions
from attention_jax.model.config import TransformerConfig
from attention_jax.model.transformer import Transformer

E, H, D = 16, 4, 4
CFG = TransformerConfig(
    vocab_size=20, emb_dim=E, num_heads=H, qkv_dim=H * D, max_len=8,
    num_encoder_layers=1, num_decoder_layers=1, mlp_dim=32,
    deterministic=True,
)
IN_ATTENTION = [name for name in positions.SCHEMES.names()
                if positions.SCHEMES.get(name).acts_in != positions.EMBEDDING]


def _normal(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape)


def _positions(length, batch=1):
  return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32),
                          (batch, length))


def _layer(mechanism='softmax', *, causal=False, self_attention=True,
           **changes):
  config = frame.AttentionConfig(mechanism=mechanism, num_heads=H,
                                 head_dim=D, deterministic=True, **changes)
  return frame.MultiHeadAttention(config, causal=causal,
                                  self_attention=self_attention)


def test_rope_rotates_pairs_by_position_angle():
  x = _normal(0, (1, 3, 1, 4))
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
  # The base sets the slow frequency: 1/base^(1/2) for 4 channels.
  slow = positions.rotate(x, jnp.array([[0, 1, 5]]), base=400.0)
  np.testing.assert_allclose(
      slow[0, 2, 0, 1], a * np.cos(0.25) - b * np.sin(0.25), atol=1e-5
  )


def test_rope_attention_depends_only_on_position_offsets():
  # Rotations cancel in dot products: shifting every position changes
  # nothing, stretching them does.
  layer = _layer(position_scheme='rope')
  x = _normal(0, (1, 6, E))
  seg, pos = jnp.ones((1, 6), jnp.int32), _positions(6)
  params = nn.unbox(layer.init(jax.random.key(1), x, x, seg, seg, pos, pos))
  run = lambda p: layer.apply(params, x, x, seg, seg, p, p)  # noqa: E731
  np.testing.assert_allclose(run(pos + 37), run(pos), atol=1e-4)
  assert not np.allclose(run(2 * pos), run(pos), atol=1e-3)


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
  options = positions.RelativeBiasOptions(num_buckets=12, max_distance=20)
  x, memory = _normal(0, (1, 4, E)), _normal(1, (1, 6, E))
  seg4, seg6 = jnp.ones((1, 4), jnp.int32), jnp.ones((1, 6), jnp.int32)
  self_layer = _layer(position_scheme='relative_bias',
                      position_options=options)
  self_params = nn.unbox(self_layer.init(jax.random.key(2), x, x, seg4,
                                         seg4))['params']
  assert self_params['relative_bias']['embedding'].shape == (12, H)
  cross_layer = _layer(position_scheme='relative_bias',
                       position_options=options, self_attention=False)
  cross_params = nn.unbox(cross_layer.init(jax.random.key(2), x, memory, seg4,
                                           seg6))['params']
  assert 'relative_bias' not in cross_params


@pytest.mark.parametrize('causal', [False, True])
def test_relative_bias_buckets_are_causal_only_in_the_decoder(causal):
  layer = _layer(causal=causal, position_scheme='relative_bias')
  x = _normal(0, (1, 12, E))
  seg = jnp.ones((1, 12), jnp.int32)
  params = nn.unbox(layer.init(jax.random.key(1), x, x, seg, seg))['params']
  # Each bucket's bias is its own id, so the bias reveals the bucket.
  table = jnp.broadcast_to(jnp.arange(32.0)[:, None], (32, H))
  params = {**params, 'relative_bias': {'embedding': table}}
  _, state = layer.apply(
      {'params': params}, x, x, seg, seg, capture_intermediates=True,
      mutable=['intermediates'],
  )
  (bias,) = state['intermediates']['relative_bias']['__call__']
  # Key 11 before the query: causal buckets keep offsets below 16 exact;
  # bidirectional ones only below 8, then 8 + floor(8 log(11/8) / log 16).
  assert bias[0, 0, 11, 0] == (11 if causal else 8)
  if not causal:
    assert bias[0, 0, 0, 3] == 16 + 3  # Keys after the query: own buckets.


def _declared(scheme):
  return [name for name in attention.names()
          if scheme in attention.get(name).capabilities.position_schemes]


@pytest.mark.parametrize('name, scheme', [
    (name, scheme) for scheme in IN_ATTENTION for name in _declared(scheme)
    if attention.get(name).capabilities.cross_attention])
def test_in_attention_schemes_leave_cross_attention_alone(name, scheme):
  x_q, memory = _normal(0, (1, 4, E)), _normal(1, (1, 6, E))
  q_seg, kv_seg = jnp.ones((1, 4), jnp.int32), jnp.ones((1, 6), jnp.int32)
  q_pos, kv_pos = _positions(4), _positions(6)
  options = attention.MECHANISMS.options(name,
                                         attention.get(name).TEST_OPTIONS)
  plain = _layer(name, options=options, self_attention=False)
  params = nn.unbox(plain.init(jax.random.key(2), x_q, memory, q_seg,
                               kv_seg))
  expected = plain.apply(params, x_q, memory, q_seg, kv_seg, q_pos, kv_pos)
  with_scheme = _layer(name, options=options, self_attention=False,
                       position_scheme=scheme)
  out = with_scheme.apply(params, x_q, memory, q_seg, kv_seg, q_pos + 3,
                          kv_pos)
  np.testing.assert_allclose(out, expected, atol=1e-6)


def test_unknown_position_scheme_names_valid_choices():
  x = jnp.zeros((1, 3, E))
  seg = jnp.ones((1, 3), jnp.int32)
  with pytest.raises(ValueError, match="'rotary'.*valid choices.*rope"):
    _layer(position_scheme='rotary').init(jax.random.key(0), x, x, seg, seg)
  tokens = jnp.ones((1, 3), jnp.int32)
  with pytest.raises(ValueError, match='valid choices.*learned'):
    Transformer(CFG.replace(position_scheme='rotary')).init(
        jax.random.key(0), tokens, tokens)


def test_learned_positions_are_a_table_over_max_len():
  tokens = jnp.array([[3, 4, 5, 1]])
  model = Transformer(CFG.replace(position_scheme='learned'))
  params = nn.unbox(model.init(jax.random.key(0), tokens, tokens))['params']
  assert params['position_embed']['embedding'].shape == (CFG.max_len, E)
  sinusoidal = Transformer(CFG)
  assert 'position_embed' not in nn.unbox(sinusoidal.init(
      jax.random.key(0), tokens, tokens
  ))['params']


def _encode_permuted_and_forward(scheme, params_fn=lambda p: p):
  """Encodings of a shuffled source, put back in order, and of the source."""
  model = Transformer(CFG.replace(position_scheme=scheme))
  inputs = jnp.array([[3, 4, 5, 6, 7]])
  params = params_fn(nn.unbox(model.init(jax.random.key(0), inputs,
                                         inputs))['params'])
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


@pytest.mark.parametrize('scheme', positions.SCHEMES.names())
def test_every_scheme_makes_the_encoder_see_token_order(scheme):
  permuted_back, forward = _encode_permuted_and_forward(scheme)
  assert not np.allclose(permuted_back, forward, atol=1e-3)
