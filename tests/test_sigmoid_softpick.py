"""What the contract suite does not check of sigmoid and softpick attention:
their exact weights (sigmoid's -log n bias per query; softpick's zeros,
rows summing below one, masked keys outside the denominator) and finite
values and gradients at long sequences with large logits."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import attention
from attention_jax.attention import base
from attention_jax.attention import masks


def _positions(segment_ids_BxL):
  """Position of each token within its segment."""
  segment_ids = np.asarray(segment_ids_BxL)
  out = np.zeros_like(segment_ids)
  for i in range(1, segment_ids.shape[1]):
    same = segment_ids[:, i] == segment_ids[:, i - 1]
    out[:, i] = np.where(same, out[:, i - 1] + 1, 0)
  return jnp.asarray(out, jnp.int32)


def _weights_inputs(logits_BxQxK, segment_ids_BxK, *, causal=False):
  """Inputs whose attention weights are the output: one head, zero queries
  (every score is the bias, `logits_BxQxK`), identity values (D = K)."""
  batch, num_q, num_k = logits_BxQxK.shape
  return base.AttentionInputs(
      inputs_q_BxQxE=jnp.zeros((batch, num_q, 1)),
      query_BxQxHxD=jnp.zeros((batch, num_q, 1, num_k)),
      key_BxKxGxD=jnp.ones((batch, num_k, 1, num_k)),
      value_BxKxGxD=jnp.broadcast_to(jnp.eye(num_k)[None, :, None],
                                     (batch, num_k, 1, num_k)),
      mask=masks.TokenMask(segment_ids_BxK, segment_ids_BxK,
                           _positions(segment_ids_BxK),
                           _positions(segment_ids_BxK), causal=causal),
      bias_BxHxQxK=jnp.asarray(logits_BxQxK, jnp.float32)[:, None],
      causal=causal, num_heads=1)


def _weights(name, inputs, **options):
  """(attend's weights, reference's weights), each [B, Q, K]."""
  mechanism = attention.get(name)(
      attention.MECHANISMS.options(name, options))
  return (mechanism.attend(None, inputs)[:, :, 0],
          mechanism.reference({}, inputs)[:, :, 0])


SEGMENTS = jnp.array([[1, 1, 1, 2, 2, 0]], jnp.int32)


def test_sigmoid_default_bias_is_minus_log_of_keys_seen_per_query():
  """Logits 0: each of a query's n keys weighs sigmoid(-log n) = 1/(1+n)."""
  zeros = jnp.zeros((1, 6, 6))
  seen = np.array([3, 3, 3, 2, 2])
  for causal, n in ((False, seen), (True, np.array([1, 2, 3, 1, 2]))):
    inputs = _weights_inputs(zeros, SEGMENTS, causal=causal)
    allowed = np.asarray(base.reference_mask(inputs)[0, 0, :5])
    for weights in _weights('sigmoid', inputs):
      np.testing.assert_allclose(
          weights[0, :5], allowed / (1.0 + n[:, None]), rtol=1e-6)


def test_sigmoid_fixed_bias_is_the_same_for_every_query():
  inputs = _weights_inputs(jnp.full((1, 6, 6), 0.5), SEGMENTS)
  allowed = np.asarray(base.reference_mask(inputs)[0, 0, :5])
  for weights in _weights('sigmoid', inputs, subtract_log_n=False,
                          bias=-2.0):
    np.testing.assert_allclose(weights[0, :5],
                               allowed / (1.0 + np.exp(1.5)), rtol=1e-6)


LOGITS = np.array([2.0, -1.0, 0.5, -3.0, 0.0, 1.0])


def _expected_softpick(logits, epsilon=1e-8):
  shifted = np.expm1(logits)
  return np.maximum(shifted, 0) / (np.abs(shifted).sum() + epsilon)


def test_softpick_weights_follow_the_formula_over_allowed_keys_only():
  """Padding keys (last two) stay out of the denominator; keys with
  non-positive logits get no weight; the row sums to less than one."""
  segments = jnp.array([[1, 1, 1, 1, 0, 0]], jnp.int32)
  logits = jnp.broadcast_to(jnp.asarray(LOGITS), (1, 6, 6))
  expected = _expected_softpick(LOGITS[:4])
  for weights in _weights('softpick', _weights_inputs(logits, segments)):
    np.testing.assert_allclose(weights[0, :4, :4],
                               np.broadcast_to(expected, (4, 4)), rtol=1e-5)
    assert np.all(np.asarray(weights[0, :4, 4:]) == 0)
    assert np.all(np.asarray(weights[0, :4][:, [1, 3]]) == 0)
    assert float(weights[0, 0].sum()) < 0.9


def test_softpick_row_of_negative_logits_attends_to_nothing():
  inputs = _weights_inputs(jnp.full((1, 4, 4), -0.5),
                           jnp.ones((1, 4), jnp.int32))
  for weights in _weights('softpick', inputs):
    assert np.all(np.asarray(weights) == 0)


def _long_inputs(length, scale, padding):
  """Causal self-attention over `length` tokens, the last `padding` of them
  padding, with queries and keys `scale` times normal and ALiBi-like
  distance biases. Query 0 is zero, so its only logit is exactly 0 (and
  softpick's denominator 0)."""
  segments = jnp.where(jnp.arange(length) < length - padding, 1, 0)[None]
  query = scale * jax.random.normal(jax.random.key(0), (1, length, 2, 8))
  distance = jnp.arange(length)[:, None] - jnp.arange(length)[None, :]
  return base.AttentionInputs(
      inputs_q_BxQxE=jnp.zeros((1, length, 1)),
      query_BxQxHxD=query.at[:, 0].set(0.0),
      key_BxKxGxD=scale * jax.random.normal(jax.random.key(1),
                                            (1, length, 1, 8)),
      value_BxKxGxD=jax.random.normal(jax.random.key(2), (1, length, 1, 8)),
      mask=masks.TokenMask(segments, segments, _positions(segments),
                           _positions(segments), causal=True),
      bias_BxHxQxK=-jnp.array([0.5, 8.0])[None, :, None, None]
      * jnp.abs(distance).astype(jnp.float32)[None, None],
      causal=True, num_heads=2)


@pytest.mark.parametrize('name', ['sigmoid', 'softpick'])
def test_long_sequence_with_large_logits_is_finite(name):
  """1024 tokens, logits in the thousands of either sign."""
  inputs = _long_inputs(1024, scale=30.0, padding=100)
  mechanism = attention.get(name)()

  def loss(query, key, value):
    out = mechanism.attend(None, dataclasses.replace(
        inputs, query_BxQxHxD=query, key_BxKxGxD=key, value_BxKxGxD=value))
    return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape))), out

  grads, out = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(
      inputs.query_BxQxHxD, inputs.key_BxKxGxD, inputs.value_BxKxGxD)
  assert bool(jnp.all(jnp.isfinite(out)))
  for grad in grads:
    assert bool(jnp.all(jnp.isfinite(grad)))


@pytest.mark.parametrize('name', ['sigmoid', 'softpick'])
def test_bfloat16_inputs_give_bfloat16_close_to_float32(name):
  inputs = _long_inputs(64, scale=1.0, padding=8)
  half = dataclasses.replace(
      inputs, **{f: getattr(inputs, f).astype(jnp.bfloat16) for f in
                 ('query_BxQxHxD', 'key_BxKxGxD', 'value_BxKxGxD')})
  mechanism = attention.get(name)()
  out = mechanism.attend(None, half)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32),
                             mechanism.attend(None, inputs), atol=5e-2)


@pytest.mark.parametrize('name, values, field', [
    ('sigmoid', {'bias': float('inf')}, 'bias'),
    ('softpick', {'epsilon': 0.0}, 'epsilon'),
])
def test_invalid_options_are_refused_naming_the_field(name, values, field):
  with pytest.raises(ValueError, match=f'options.{name}: {field}='):
    attention.MECHANISMS.options(name, values)
