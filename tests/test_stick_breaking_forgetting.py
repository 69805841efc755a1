"""Stick-breaking and forgetting attention beyond the contract suite: hand
computed weights, float32 stability and precision at 4096 positions, and
the places their papers do not define being refused."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import attention
from attention_jax.attention import base
from attention_jax.attention import masks
from attention_jax.train import config_check
from experiments.configs import bible

LENGTH, HEADS, DEPTH, WIDTH = 4096, 2, 8, 16


class _Core(nn.Module):
  """The mechanism's `attend`, with its key extras, as the frame calls it."""

  mechanism: str
  options: object = None

  @nn.compact
  def __call__(self, inputs):
    mechanism = attention.get(self.mechanism)(self.options)
    extras = mechanism.key_extras(self, inputs.inputs_kv_BxKxE,
                                  inputs.mask.kv_positions_BxK, inputs.rotate,
                                  inputs.num_heads)
    return mechanism.attend(
        self, dataclasses.replace(inputs, key_extras=extras))


def _inputs(query, key, value, *, causal=True, x=None):
  """Self-attention inputs of one sentence filling each row."""
  batch, length = query.shape[:2]
  segments = jnp.ones((batch, length), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32),
                               (batch, length))
  if x is None:
    x = jnp.zeros((batch, length, WIDTH))
  return base.AttentionInputs(
      inputs_q_BxQxE=x, inputs_kv_BxKxE=x, query_BxQxHxD=query,
      key_BxKxGxD=key, value_BxKxGxD=value,
      mask=masks.TokenMask(segments, segments, positions, positions,
                           causal=causal),
      causal=causal, num_heads=query.shape[2])


def _logit(p):
  return float(np.log(p / (1 - p)))


@pytest.mark.parametrize('attend_current, expected', [
    # A_3j = beta_3j prod_{j<k<3} (1 - beta_3k) with beta = .5, .25, .8:
    # .5 * .75 * .2, .25 * .2, .8 on values 1, 10, 100.
    (False, .075 * 1 + .05 * 10 + .8 * 100),
    # The query's own token (beta = .5, value 1000) breaks the stick first.
    (True, .5 * 1000 + .5 * (.075 * 1 + .05 * 10 + .8 * 100)),
])
def test_stick_breaking_weights_by_hand(attend_current, expected):
  # One head of size 1 and q = 1, so z_3j = k_j.
  key = jnp.array([_logit(.5), _logit(.25), _logit(.8), 0.0])
  value = jnp.array([1.0, 10.0, 100.0, 1000.0])
  inputs = _inputs(jnp.ones((1, 4, 1, 1)), key[None, :, None, None],
                   value[None, :, None, None])
  mechanism = attention.get('stick_breaking')(
      attention.MECHANISMS.options('stick_breaking',
                                   {'attend_current': attend_current}))
  for out in (mechanism.attend(None, inputs),
              mechanism.reference({}, inputs)):
    np.testing.assert_allclose(out[0, 3, 0, 0], expected, rtol=1e-6)
    if not attend_current:
      # The first token has no key before it: the whole stick is left.
      assert float(out[0, 0, 0, 0]) == 0.0


def test_stick_breaking_attend_current_equals_reference_when_packed():
  """The option's fast path against its reference (the contract suite
  checks the default), across packed sentences and padding."""
  segments = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0]], jnp.int32)
  positions = jnp.array([[0, 1, 2, 0, 1, 2, 3, 0]], jnp.int32)
  keys = jax.random.split(jax.random.key(0), 3)
  shape = (1, 8, HEADS, DEPTH)
  inputs = dataclasses.replace(
      _inputs(*(jax.random.normal(k, shape) for k in keys)),
      mask=masks.TokenMask(segments, segments, positions, positions,
                           causal=True))
  mechanism = attention.get('stick_breaking')(
      attention.MECHANISMS.options('stick_breaking', {'attend_current': True}))
  real = (segments != 0)[0]
  np.testing.assert_allclose(mechanism.attend(None, inputs)[0, real],
                             mechanism.reference({}, inputs)[0, real],
                             atol=1e-6)


@pytest.mark.parametrize('causal, query_index, weights', [
    # D_2j = sum_{l=j+1}^{2} log f_l with f_1 = .5, f_2 = .25.
    (True, 2, [.5 * .25, .25, 1.0]),
    # The encoder's span from query 0 forwards to key j.
    (False, 0, [1.0, .5, .5 * .25]),
])
def test_forgetting_decay_by_hand(causal, query_index, weights):
  # Zero queries: the logits are D alone.
  log_forget = jnp.log(jnp.array([.9, .5, .25]))[None, :, None]
  value = jnp.array([1.0, 10.0, 100.0])[None, :, None, None]
  inputs = dataclasses.replace(
      _inputs(jnp.zeros((1, 3, 1, 1)), jnp.zeros((1, 3, 1, 1)), value,
              causal=causal),
      key_extras={'log_forget': log_forget})
  out = attention.get('forgetting')().attend(None, inputs)
  weights = np.array(weights) / sum(weights)
  np.testing.assert_allclose(out[0, query_index, 0, 0],
                             weights @ np.array([1.0, 10.0, 100.0]),
                             rtol=1e-6)


def _long_inputs(scale, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  shape = (1, LENGTH, HEADS, DEPTH)
  return _inputs(scale * jax.random.normal(keys[0], shape),
                 scale * jax.random.normal(keys[1], shape),
                 jax.random.normal(keys[2], shape),
                 x=jax.random.normal(keys[3], (1, LENGTH, WIDTH)))


def _with_gate_bias(params, gate_bias):
  """Parameters with every forget gate's bias set (gates f = sigmoid)."""
  if 'forget_gate' not in params:
    return params
  gate = dict(params['forget_gate'],
              bias=jnp.full_like(params['forget_gate']['bias'], gate_bias))
  return dict(params, forget_gate=gate)


@pytest.mark.parametrize('name', ['stick_breaking', 'forgetting'])
@pytest.mark.parametrize('scale, gate_bias', [
    # Logits of unit size, gates of the initial size.
    (1.0, 0.0),
    # Logits in the hundreds of both signs; forget gates near 0 (log f near
    # -40, D down to -1.6e5).
    (30.0, -40.0),
])
def test_finite_at_4096_positions(name, scale, gate_bias):
  inputs = _long_inputs(scale)
  core = _Core(name)
  params = _with_gate_bias(
      nn.unbox(core.init(jax.random.key(1), inputs).get('params', {})),
      gate_bias)

  def loss(params, query, key, value):
    out = core.apply({'params': params}, dataclasses.replace(
        inputs, query_BxQxHxD=query, key_BxKxGxD=key, value_BxKxGxD=value))
    return jnp.sum(out * inputs.value_BxKxGxD[:, ::-1]), out

  grads, out = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(
      params, inputs.query_BxQxHxD, inputs.key_BxKxGxD,
      inputs.value_BxKxGxD)
  assert bool(jnp.all(jnp.isfinite(out)))
  for grad in jax.tree.leaves(grads):
    assert bool(jnp.all(jnp.isfinite(grad)))
  # Not finite by being empty: late queries attend.
  assert float(jnp.abs(out[0, -1]).sum()) > 0


def _float64_last_queries(name, inputs, params, count):
  """The paper's formulas in float64 NumPy for the last `count` queries."""
  query = np.asarray(inputs.query_BxQxHxD[0], np.float64)
  key = np.asarray(inputs.key_BxKxGxD[0], np.float64)
  value = np.asarray(inputs.value_BxKxGxD[0], np.float64)
  out = np.zeros((count, HEADS, DEPTH))
  if name == 'forgetting':
    gate = params['forget_gate']
    x = np.asarray(inputs.inputs_kv_BxKxE[0], np.float64)
    a = x @ np.asarray(gate['kernel'], np.float64) + np.asarray(
        gate['bias'], np.float64)
    log_f = -np.log1p(np.exp(-a))
  for row, i in enumerate(range(LENGTH - count, LENGTH)):
    for h in range(HEADS):
      z = key[:i + 1, h] @ query[i, h] / np.sqrt(DEPTH)
      if name == 'forgetting':
        # D_ij = sum_{l=j+1}^{i} log f_l, summed in float64.
        decay = np.append(np.cumsum(log_f[i:0:-1, h])[::-1], 0.0)
        weights = np.exp(z + decay - np.max(z + decay))
        weights /= weights.sum()
      else:
        # Keys before i break the stick; -log of what the nearer ones left.
        z[i] = -np.inf
        left = np.append(np.cumsum(np.log1p(np.exp(z[i - 1:0:-1])))[::-1],
                         [0.0, 0.0])
        weights = np.exp(-np.log1p(np.exp(-z)) - left)
      out[row, h] = weights @ value[:i + 1, h]
  return out


@pytest.mark.parametrize('name, gate_bias', [
    ('stick_breaking', 0.0),
    # The initial gates, f near 1/2: D reaches about -2800, where float32's
    # spacing is 2.4e-4.
    ('forgetting', 0.0),
])
def test_float32_matches_float64_at_4096_positions(name, gate_bias):
  inputs = _long_inputs(1.0, seed=3)
  core = _Core(name)
  params = _with_gate_bias(
      nn.unbox(core.init(jax.random.key(1), inputs).get('params', {})),
      gate_bias)
  out = core.apply({'params': params}, inputs)
  count = 4
  # Differences of long float32 prefix sums miss this by about 1e-4.
  np.testing.assert_allclose(
      out[0, -count:], _float64_last_queries(name, inputs, params, count),
      atol=2e-6, rtol=1e-5)


def _refusal(**model) -> str:
  config = bible.get_config()
  config.model.update(model)
  with pytest.raises(ValueError) as error:
    config_check.check_config(config)
  return str(error.value)


def _accepts(**model):
  config = bible.get_config()
  config.model.update(model)
  config_check.check_config(config)


def test_stick_breaking_serves_only_the_decoder_self_attention():
  _accepts(decoder_self_attention='stick_breaking')
  message = _refusal(attention='stick_breaking')
  assert ("config.model.attention='stick_breaking' is not defined for the "
          'encoder self-attention (non-causal)') in message
  assert 'config.model.encoder_self_attention to one of: ' in message
  message = _refusal(attention='softmax', cross_attention='stick_breaking')
  assert ("config.model.cross_attention='stick_breaking' is not defined for "
          'cross-attention') in message


def test_forgetting_serves_both_self_attentions_but_not_cross_attention():
  _accepts(encoder_self_attention='forgetting',
           decoder_self_attention='forgetting')
  message = _refusal(cross_attention='forgetting')
  assert ("config.model.cross_attention='forgetting' is not defined for "
          'cross-attention') in message


def test_forgetting_gate_bias_starts_at_the_decay_times():
  options = attention.MECHANISMS.options(
      'forgetting', {'decay_time_min': 2.0, 'decay_time_max': 128.0})
  shape = (1, 5, 4, DEPTH)
  inputs = _inputs(jnp.zeros(shape), jnp.zeros(shape), jnp.zeros(shape))
  params = nn.unbox(
      _Core('forgetting', options).init(jax.random.key(0), inputs)['params'])
  # Head h forgets at first as exp(-1/T_h): T = 2, 8, 32, 128 tokens.
  log_f = jax.nn.log_sigmoid(params['forget_gate']['bias'])
  np.testing.assert_allclose(-1 / log_f, [2.0, 8.0, 32.0, 128.0], rtol=1e-5)
  # The default is the paper's: b_f = 0, f = 1/2.
  default = nn.unbox(_Core('forgetting').init(jax.random.key(0), inputs))
  np.testing.assert_array_equal(
      default['params']['forget_gate']['bias'], np.zeros(4))


@pytest.mark.parametrize('values', [
    {'decay_time_min': 8.0},
    {'decay_time_min': 64.0, 'decay_time_max': 8.0},
    {'decay_time_min': -1.0, 'decay_time_max': 8.0},
])
def test_forgetting_refuses_a_bad_decay_time_range(values):
  with pytest.raises(ValueError, match='config.model.options.forgetting: '
                     r'decay_time_min=.* must both be 0'):
    attention.MECHANISMS.options('forgetting', values)
