"""The delta rule's chunked and bidirectional forms against its recurrence.

Tolerances (float32): outputs and final states within 1e-5, gradients
within 1e-4 (relative 1e-3), at lengths that are and are not multiples of
the chunk.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.attention import delta_rule
from attention_jax.attention import head_norms

HEADS, DEPTH, CHUNK = 2, 4, 4
# Row 0: two packed sentences, the second crossing a chunk boundary, then
# padding; row 1 one sentence to the end (its final state is a real one).
SEGMENTS = {
    12: [[1] * 3 + [2] * 7 + [0] * 2, [1] * 12],
    13: [[1] * 3 + [2] * 8 + [0] * 2, [1] * 13],
}


def _inputs(length, seed=0, gated=True, segments=None):
  """q, k, v, β, log α and segment ids as callers give them (padding
  neither writes nor decays)."""
  keys = jax.random.split(jax.random.key(seed), 5)
  shape = (2, length, HEADS, DEPTH)
  segment_ids = jnp.array(segments or SEGMENTS[length], jnp.int32)
  real = (segment_ids > 0)[..., None]
  beta = jax.nn.sigmoid(jax.random.normal(keys[3], shape[:3]))
  log_alpha = jax.nn.log_sigmoid(
      2.0 + jax.random.normal(keys[4], shape[:3]))
  if not gated:
    log_alpha = jnp.zeros_like(log_alpha)
  return dict(
      query_BxLxHxK=head_norms.l2_normalise(
          jax.random.normal(keys[0], shape)),
      key_BxLxHxK=head_norms.l2_normalise(jax.random.normal(keys[1], shape)),
      value_BxLxHxV=jax.random.normal(keys[2], shape),
      beta_BxLxH=jnp.where(real, beta, 0.0),
      log_alpha_BxLxH=jnp.where(real, log_alpha, 0.0),
      segment_ids_BxL=segment_ids)


def _final_recurrent_state(arrays):
  _, states = delta_rule.recurrent(**arrays)
  return states[:, -1]


@pytest.mark.parametrize('gated', [False, True])
@pytest.mark.parametrize('length', [12, 13])
def test_chunked_equals_recurrent(length, gated):
  """Outputs, final states and gradients of every input."""
  arrays = _inputs(length, gated=gated)
  real = (arrays['segment_ids_BxL'] > 0)[..., None, None]
  cotangent = jax.random.normal(jax.random.key(9), (2, length, HEADS, DEPTH))
  state_cotangent = jax.random.normal(jax.random.key(8),
                                      (2, HEADS, DEPTH, DEPTH))

  def chunked(floats):
    return delta_rule.chunked(**floats, segment_ids_BxL=arrays[
        'segment_ids_BxL'], chunk_size=CHUNK)

  def recurrent(floats):
    out, states = delta_rule.recurrent(
        **floats, segment_ids_BxL=arrays['segment_ids_BxL'])
    return out, states[:, -1]

  floats = {k: v for k, v in arrays.items() if k != 'segment_ids_BxL'}
  ours, theirs = jax.jit(chunked)(floats), jax.jit(recurrent)(floats)
  np.testing.assert_allclose(jnp.where(real, ours[0], 0),
                             jnp.where(real, theirs[0], 0), atol=1e-5)
  np.testing.assert_allclose(ours[1], theirs[1], atol=1e-5)
  # Row 1 ends inside a sentence: its final state is not trivially zero.
  assert float(jnp.abs(theirs[1][1]).max()) > 0.1

  def loss(f, floats):
    out, state = f(floats)
    return (jnp.sum(jnp.where(real, out, 0) * cotangent)
            + jnp.sum(state * state_cotangent))

  grads = [jax.jit(jax.grad(lambda floats, f=f: loss(f, floats)))(floats)
           for f in (chunked, recurrent)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4,
                                                       rtol=1e-3), *grads)


def test_no_decay_is_log_alpha_zero():
  """log α = None (DeltaNet: the decay terms skipped) computes what zeros
  compute, in every form, gradients included."""
  arrays = _inputs(13, seed=3, gated=False)
  real = (arrays['segment_ids_BxL'] > 0)[..., None, None]
  floats = {k: v for k, v in arrays.items()
            if k not in ('segment_ids_BxL', 'log_alpha_BxLxH')}
  cotangent = jax.random.normal(jax.random.key(7), (2, 13, HEADS, DEPTH))
  q_segments = jnp.array([[2, 1, 2, 0], [1, 1, 1, 1]], jnp.int32)

  def forms(floats, log_alpha):
    args = (floats['query_BxLxHxK'], floats['key_BxLxHxK'],
            floats['value_BxLxHxV'], floats['beta_BxLxH'], log_alpha)
    out, state = delta_rule.chunked(*args, arrays['segment_ids_BxL'], CHUNK)
    both = delta_rule.bidirectional(*args, arrays['segment_ids_BxL'], CHUNK)
    cross = delta_rule.cross(floats['query_BxLxHxK'][:, :4], *args[1:],
                             q_segments, arrays['segment_ids_BxL'], CHUNK)
    scanned, _ = delta_rule.recurrent(*args, arrays['segment_ids_BxL'])
    return (jnp.where(real, out, 0), state, jnp.where(real, both, 0), cross,
            jnp.where(real, scanned, 0))

  def loss(floats, log_alpha):
    out, state, both, cross, scanned = forms(floats, log_alpha)
    return (jnp.sum(out * cotangent) + jnp.sum(state ** 2)
            + jnp.sum(both * cotangent) + jnp.sum(cross ** 2)
            + jnp.sum(scanned * cotangent))

  zeros = arrays['log_alpha_BxLxH']
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               jax.jit(forms)(floats, zeros), forms(floats, None))
  grads = [jax.jit(jax.grad(loss), static_argnums=1)(floats, None),
           jax.jit(jax.grad(loss))(floats, zeros)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               *grads)


@pytest.mark.parametrize('gated', [False, True])
def test_bidirectional_equals_two_plain_scans(gated):
  arrays = _inputs(13, seed=1, gated=gated)
  real = (arrays['segment_ids_BxL'] > 0)[..., None, None]
  forward, _ = delta_rule.recurrent(**arrays)
  backward, _ = delta_rule.recurrent(**arrays, reverse=True,
                                     read_before_write=True)
  ours = jax.jit(delta_rule.bidirectional, static_argnums=6)(
      *arrays.values(), CHUNK)
  np.testing.assert_allclose(jnp.where(real, ours, 0),
                             jnp.where(real, forward + backward, 0),
                             atol=1e-5)
  # The last token of a sentence sees no later key: forward only.
  np.testing.assert_allclose(ours[0, 10], forward[0, 10], atol=1e-5)


def test_cross_reads_each_segments_final_state():
  arrays = _inputs(13, seed=2)
  q_segments = jnp.array([[2, 1, 2, 0], [1, 1, 1, 1]], jnp.int32)
  query = head_norms.l2_normalise(
      jax.random.normal(jax.random.key(5), (2, 4, HEADS, DEPTH)))
  _, states = delta_rule.recurrent(**arrays)
  ours = jax.jit(delta_rule.cross, static_argnums=7)(
      query, arrays['key_BxLxHxK'], arrays['value_BxLxHxV'],
      arrays['beta_BxLxH'], arrays['log_alpha_BxLxH'], q_segments,
      arrays['segment_ids_BxL'], CHUNK)
  # Row 0: sentence 1 ends at token 2, sentence 2 at token 10.
  for i, last in enumerate((10, 2, 10)):
    np.testing.assert_allclose(
        ours[0, i], jnp.einsum('hk,hkv->hv', query[0, i], states[0, last]),
        atol=1e-5)
  row_1 = jnp.einsum('qhk,hkv->qhv', query[1], states[1, -1])
  np.testing.assert_allclose(ours[1], row_1, atol=1e-5)


@pytest.mark.parametrize('gated', [False, True])
def test_state_resets_at_packed_sentence_starts(gated):
  """A packed sentence computes exactly what it computes alone."""
  packed = _inputs(13, seed=4, gated=gated)
  alone = {name: x[:, 3:11] for name, x in packed.items()}
  alone['segment_ids_BxL'] = jnp.ones((2, 8), jnp.int32)
  ours, _ = delta_rule.chunked(**packed, chunk_size=CHUNK)
  theirs, final = delta_rule.chunked(**alone, chunk_size=CHUNK)
  np.testing.assert_allclose(ours[0, 3:11], theirs[0], atol=1e-5)
  # Padding after the sentence leaves its state as it is.
  _, padded_final = delta_rule.chunked(
      **dict(packed, segment_ids_BxL=jnp.where(
          packed['segment_ids_BxL'] == 1, 3, 2)), chunk_size=CHUNK)
  np.testing.assert_allclose(padded_final[0], final[0], atol=1e-5)


@pytest.mark.parametrize('log_alpha, beta', [
    (-30.0, 1e-4), (-30.0, 1 - 1e-4), (-1e-4, 1e-4), (-1e-4, 1 - 1e-4)])
def test_gradients_finite_at_8k_tokens(log_alpha, beta):
  """Decays near 0 (α = e⁻³⁰) and 1, writes near 0 and 1, 8192 tokens."""
  length = 8192
  keys = jax.random.split(jax.random.key(6), 3)
  shape = (1, length, 1, 8)

  def loss(q, k, v, log_alpha_BxLxH, beta_BxLxH):
    out, state = delta_rule.chunked(
        head_norms.l2_normalise(q), head_norms.l2_normalise(k), v,
        beta_BxLxH, log_alpha_BxLxH, jnp.ones((1, length), jnp.int32), 64)
    return jnp.sum(out ** 2) + jnp.sum(state ** 2)

  arrays = [jax.random.normal(key, shape) for key in keys] + [
      jnp.full(shape[:3], log_alpha), jnp.full(shape[:3], beta)]
  value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))(
      *arrays)
  assert np.isfinite(float(value))
  for grad in grads:
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize('size', [1, 3, 16, 45])
def test_blocked_unit_lower_inverse_is_the_inverse(size):
  # Entries of the size the chunked form meets (beta * decay * k_t . k_j
  # for unit keys in many dimensions). With N(0, 1) entries the inverse of
  # a 45 x 45 unit triangle reaches ~6e5, and no float32 method is within
  # 1e-4 of it: that measures the conditioning, not the blocks.
  a = 0.3 * jnp.tril(jax.random.normal(jax.random.key(size),
                                       (2, size, size)), -1)
  expected = np.linalg.inv(np.eye(size) + np.asarray(a, np.float64))
  np.testing.assert_allclose(delta_rule.unit_lower_inverse(a), expected,
                             atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('size', [1, 5, 16])
def test_unit_lower_inverse_gradient(size):
  """The custom gradient −Tᵀ T̄ Tᵀ (strictly lower part) equals the
  gradient of jnp.linalg.inv of the same strictly lower triangle."""
  keys = jax.random.split(jax.random.key(size), 2)
  a = 0.3 * jax.random.normal(keys[0], (2, size, size))
  cotangent = jax.random.normal(keys[1], (2, size, size))
  strictly_lower = lambda a: jnp.tril(a, -1)
  ours = jax.grad(lambda a: jnp.sum(
      delta_rule.unit_lower_inverse(strictly_lower(a)) * cotangent))(a)
  theirs = jax.grad(lambda a: jnp.sum(jnp.linalg.inv(
      jnp.eye(size)[None] + strictly_lower(a)) * cotangent))(a)
  np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)
  # The upper triangle and the diagonal do not enter: their gradient is 0.
  ours_raw = jax.grad(lambda a: jnp.sum(
      delta_rule.unit_lower_inverse(a) * cotangent))(a)
  np.testing.assert_array_equal(jnp.triu(ours_raw), 0.0)


def test_blocked_inverse_is_exact_for_equal_unit_keys_at_full_strength():
  # β = 1 and k_t = k_j: A is all ones below the diagonal, whose powers grow
  # like binomial coefficients (a power series would cancel them), while
  # (I + A)⁻¹ = I − the subdiagonal.
  size = 64
  a = jnp.tril(jnp.ones((size, size)), -1)
  expected = np.eye(size) - np.eye(size, k=-1)
  np.testing.assert_array_equal(delta_rule.unit_lower_inverse(a), expected)
