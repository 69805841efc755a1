"""The short convolution, output norm and output gate of the linear families
(`conv_norm_gate`) beyond the contract suite, which runs them on (each
family's TEST_OPTIONS): the convolution's window against its formula and
packed sentences, its decoding state, the norm and gate against their
formulas, the sigmoid gate through decoding, the default (all off) adding
nothing, and the options' validation."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import attention
from attention_jax.attention import base
from attention_jax.attention import conv_norm_gate
from attention_jax.attention import frame
from attention_jax.attention import masks

E, H, D = 8, 2, 4
NAMES = ('retnet', 'gla', 'mamba2', 'deltanet', 'gated_deltanet')
ADDED = {'query_conv', 'key_conv', 'value_conv', 'output_norm',
         'output_gate'}


def _normal(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape)


def _silu(x):
  return x / (1.0 + np.exp(-x))


def _layer(name, *, decode=False, **options):
  config = frame.AttentionConfig(
      mechanism=name, options=attention.MECHANISMS.options(
          name, {'chunk_size': 2, **options}),
      num_heads=H, head_dim=D, deterministic=True, decode=decode)
  return frame.MultiHeadAttention(config, causal=True)


def test_conv_is_its_formula_within_each_sentence():
  segments = jnp.array([[1, 1, 1, 2, 2, 2, 0, 0]], jnp.int32)
  x = _normal(0, (1, 8, H, D))
  kernel = _normal(1, (3, H, D))
  out = np.asarray(conv_norm_gate.short_conv(x, kernel, segments))
  x, kernel, seg = np.asarray(x), np.asarray(kernel), np.asarray(segments)
  for t in range(8):
    taps = sum(kernel[2 - back] * x[0, t - back] for back in range(3)
               if t - back >= 0 and seg[0, t - back] == seg[0, t])
    expected = _silu(taps) if seg[0, t] else np.zeros((H, D))
    np.testing.assert_allclose(out[0, t], expected, atol=1e-6)
  # The second sentence's first token sees only itself.
  np.testing.assert_allclose(out[0, 3], _silu(kernel[2] * x[0, 3]),
                             atol=1e-6)


def test_conv_never_reaches_across_a_sentence_start_or_from_padding():
  segments = jnp.array([[1, 1, 1, 2, 2, 2, 0, 0]], jnp.int32)
  x = _normal(0, (1, 8, H, D))
  kernel = _normal(1, (4, H, D))
  out = conv_norm_gate.short_conv(x, kernel, segments)
  changed = x.at[:, :3].add(1.0).at[:, 6:].add(1.0)
  np.testing.assert_array_equal(
      conv_norm_gate.short_conv(changed, kernel, segments)[:, 3:6],
      out[:, 3:6])
  np.testing.assert_array_equal(out[:, 6:], 0.0)


def _decode(layer, params, x):
  seg = jnp.ones(x.shape[:2], jnp.int32)
  _, variables = layer.apply({'params': params}, x, x, seg, seg,
                             mutable=['cache'])
  steps = []
  for t in range(x.shape[1]):
    x_t = x[:, t:t + 1]
    out, variables = layer.apply({'params': params, **variables}, x_t, x_t,
                                 seg[:, :1], seg[:, :1], mutable=['cache'])
    steps.append(out)
  return jnp.concatenate(steps, 1), variables['cache']


@pytest.mark.parametrize('name', ['gla', 'deltanet'])
def test_decoding_with_conv_and_sigmoid_gate_equals_the_full_pass(name):
  options = dict(conv_size=4, output_gate='sigmoid', output_norm=True)
  x = _normal(0, (2, 6, E))
  seg = jnp.ones((2, 6), jnp.int32)
  layer = _layer(name, **options)
  params = nn.unbox(layer.init(jax.random.key(1), x, x, seg, seg))['params']
  full = layer.apply({'params': params}, x, x, seg, seg)
  decoded, cache = _decode(_layer(name, decode=True, **options), params, x)
  np.testing.assert_allclose(decoded, full, atol=1e-5)
  # The state keeps the last conv_size - 1 projected keys (and q, v).
  keys = (jnp.einsum('ble,egd->blgd', x[:, 3:], params['key']['kernel'])
          + params['key']['bias'][None, None])
  np.testing.assert_allclose(cache['state']['conv']['key'], keys, atol=1e-6)


class _Finish(nn.Module):
  options: conv_norm_gate.ConvNormGateOptions

  @nn.compact
  def __call__(self, out, x):
    return conv_norm_gate.finish(self, self.options, out, x)


@pytest.mark.parametrize('norm, gate', [(True, 'swish'), (True, 'none'),
                                        (False, 'sigmoid')])
def test_norm_then_gate_are_their_formulas(norm, gate):
  options = conv_norm_gate.ConvNormGateOptions(output_norm=norm,
                                               output_gate=gate)
  out, x = _normal(0, (2, 3, H, D)), _normal(1, (2, 3, E))
  module = _Finish(options)
  params = nn.unbox(module.init(jax.random.key(2), out, x))['params']
  params = jax.tree.map(lambda p: p + 0.3 * _normal(3, p.shape), params)
  got = module.apply({'params': params}, out, x)
  o, x = np.asarray(out, np.float64), np.asarray(x, np.float64)
  if norm:
    o = (o / np.sqrt((o ** 2).mean(-1, keepdims=True) + 1e-5)
         * np.asarray(params['output_norm']))
  if gate != 'none':
    logits = np.einsum('bqe,ehd->bqhd', x,
                       np.asarray(params['output_gate']['kernel']))
    sigmoid = 1.0 / (1.0 + np.exp(-logits))
    o = o * (logits * sigmoid if gate == 'swish' else sigmoid)
  assert set(params) == ({'output_norm'} if norm else set()) | (
      {'output_gate'} if gate != 'none' else set())
  np.testing.assert_allclose(got, o, atol=1e-5, rtol=1e-5)


class _Core(nn.Module):
  name_: str

  @nn.compact
  def __call__(self, inputs):
    mechanism = attention.get(self.name_)()
    extras = mechanism.key_extras(self, inputs.inputs_kv_BxKxE,
                                  inputs.mask.kv_positions_BxK, inputs.rotate,
                                  H)
    out = mechanism.attend(self, dataclasses.replace(inputs,
                                                     key_extras=extras))
    return mechanism.finish(self, out, inputs.inputs_q_BxQxE)


@pytest.mark.parametrize('name', NAMES)
def test_default_options_add_nothing(name):
  """Off by default: no parameters or state added, and attend (with finish)
  still equals the plain reference, causal and encoder."""
  seg = jnp.array([[1, 1, 1, 2, 2, 0]], jnp.int32)
  x = _normal(0, (1, 6, E))
  layer = frame.MultiHeadAttention(frame.AttentionConfig(
      mechanism=name, num_heads=H, head_dim=D, decode=True), causal=True)
  variables = layer.init(jax.random.key(1), x, x, seg, seg)
  assert not set(variables['params']) & ADDED
  assert set(variables['cache']['state']) == {'state'}
  positions = jnp.array([[0, 1, 2, 0, 1, 0]], jnp.int32)
  for causal in (True, False):
    inputs = base.AttentionInputs(
        inputs_q_BxQxE=x, inputs_kv_BxKxE=x,
        query_BxQxHxD=_normal(1, (1, 6, H, D)),
        key_BxKxGxD=_normal(2, (1, 6, H, D)),
        value_BxKxGxD=_normal(3, (1, 6, H, D)),
        mask=masks.TokenMask(seg, seg, positions, positions, causal=causal),
        causal=causal, num_heads=H, head_dim=D)
    core = _Core(name)
    params = nn.unbox(core.init(jax.random.key(4), inputs)).get('params', {})
    real = (seg > 0)[..., None, None]
    np.testing.assert_allclose(
        jnp.where(real, core.apply({'params': params}, inputs), 0),
        jnp.where(real, attention.get(name)().reference(params, inputs), 0),
        atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize('values, message', [
    ({'conv_size': 1}, 'conv_size=1 must be 0'),
    ({'conv_size': -2}, 'conv_size=-2 must be 0'),
    ({'output_gate': 'relu'},
     "output_gate='relu' is not one of \\('none', 'swish', 'sigmoid'\\)"),
])
@pytest.mark.parametrize('name', ['gla', 'gated_deltanet'])
def test_invalid_options_are_refused_naming_the_field(name, values, message):
  with pytest.raises(ValueError,
                     match=f'config.model.options.{name}: {message}'):
    attention.MECHANISMS.options(name, values)
