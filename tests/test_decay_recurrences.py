"""The decaying-state recurrences of `retnet`, `gla` and `mamba2` beyond the
contract suite: the chunked form against the token-by-token scan (outputs,
final states, gradients) at lengths that are and are not multiples of the
chunk, with per-channel decays inside and beyond the one-matmul form's
range, the bidirectional form against its dense definition and RetNet's
gamma^|i-j|, state resets between packed sentences, and float32 gradients
at 8192 positions with decays near 0 and near 1.

Tolerances (float32): outputs and final states 1e-5 absolute and relative,
gradients 1e-4; at 8192 positions, outputs 1e-3 absolute against float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.attention import decay_scan
from attention_jax.attention import retnet

HEADS, DEPTH, CHUNK = 2, 4, 4
# Scalar decays (one per head: RetNet, Mamba-2) and per-channel (GLA).
CHANNELS = [1, DEPTH]


def _normal(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape)


def _arrays(length, channels, seed=0, batch=2):
  """Queries, keys, values and log-decays in (-3, 0)."""
  q, k, v = (_normal(seed + i, (batch, length, HEADS, DEPTH))
             for i in range(3))
  log_decay = -3.0 * jax.random.uniform(
      jax.random.key(seed + 3), (batch, length, HEADS, channels))
  return q, k, v, log_decay


def _segments(length):
  """Row 0: two packed sentences and trailing padding; row 1: one sentence."""
  first = length // 3
  row0 = [1] * first + [2] * (length - first - 2) + [0, 0]
  return jnp.array([row0, [1] * length], jnp.int32)


@pytest.mark.parametrize('channels', CHANNELS)
@pytest.mark.parametrize('length, chunk', [(12, CHUNK), (13, CHUNK),
                                           (45, 32)])
def test_chunked_equals_recurrent_scan(length, chunk, channels):
  """Outputs, final states and gradients, packed rows with padding; chunks
  of 32 take GLA's two-level form (sub-chunks of 16)."""
  arrays = _arrays(length, channels)
  seg = _segments(length)
  real = (seg > 0)[..., None, None]
  cotangent_out = _normal(9, arrays[2].shape) * real
  cotangent_state = _normal(10, (2, HEADS, DEPTH, DEPTH))

  def chunked(*arrays):
    return decay_scan.causal_scan(*arrays, seg, chunk)

  def recurrent(*arrays):
    return decay_scan.reference_recurrence(*arrays, seg)

  (out, state), (ref_out, ref_state) = chunked(*arrays), recurrent(*arrays)
  np.testing.assert_allclose(jnp.where(real, out, 0),
                             jnp.where(real, ref_out, 0),
                             atol=1e-5, rtol=1e-5)
  # Row 1 is one sentence: its final state is the recurrence's last state.
  np.testing.assert_allclose(state[1], ref_state[1], atol=1e-5, rtol=1e-5)

  def loss(f):
    def scalar(*arrays):
      out, state = f(*arrays)
      return (jnp.sum(out * cotangent_out)
              + jnp.sum(state[1] * cotangent_state[1]))
    return jax.grad(scalar, argnums=(0, 1, 2, 3))(*arrays)

  for ours, theirs in zip(loss(chunked), loss(recurrent)):
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('nats_per_token', [2.0, 30.0])
def test_per_channel_chunks_within_and_beyond_the_factored_range(
    nats_per_token):
  """GLA's chunks are scored by one matmul while a chunk spans at most
  FACTORED_RANGE nats and by the two-level form beyond it; either way the
  outputs, final state and gradients are the recurrence's."""
  length, chunk = 19, 8
  q, k, v, _ = _arrays(length, DEPTH)
  log_decay = -nats_per_token * jax.random.uniform(
      jax.random.key(5), (2, length, HEADS, DEPTH))
  # Every chunk within the range (2 nats x 8), or the first beyond it.
  span = float(-jnp.min(jnp.sum(log_decay[:, :chunk], 1)))
  assert ((span > decay_scan.FACTORED_RANGE)
          == (nats_per_token * chunk > decay_scan.FACTORED_RANGE))
  seg = _segments(length)
  real = (seg > 0)[..., None, None]
  cotangent = _normal(9, v.shape) * real

  def loss(f):
    def scalar(*arrays):
      out, state = f(*arrays)
      return jnp.sum(out * cotangent) + jnp.sum(state[1])
    return jax.value_and_grad(scalar, argnums=(0, 1, 2, 3))(q, k, v,
                                                          log_decay)

  ours = loss(lambda *a: decay_scan.causal_scan(*a, seg, chunk))
  theirs = loss(lambda *a: decay_scan.reference_recurrence(*a, seg))
  np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-5)
  for got, want in zip(ours[1], theirs[1]):
    assert bool(jnp.all(jnp.isfinite(got)))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_factored_and_two_level_scores_agree():
  """The two per-channel scorings of a chunk, lower triangle included."""
  q, k = (_normal(i, (1, HEADS, 3, 16, DEPTH)) for i in range(2))
  cum = jnp.cumsum(-2.0 * jax.random.uniform(jax.random.key(3), q.shape), 3)
  lower = jnp.tril(jnp.ones((16, 16), bool))
  np.testing.assert_allclose(
      jnp.where(lower, decay_scan._factored_scores(q, k, cum), 0.0),
      decay_scan._two_level_scores(q, k, cum), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('channels', CHANNELS)
def test_bidirectional_equals_its_dense_definition(channels):
  length = 11
  q, k, v, log_decay = _arrays(length, channels)
  seg = _segments(length)
  visible = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)
  ours = decay_scan.bidirectional_scan(q, k, v, log_decay, seg, CHUNK)
  theirs = decay_scan.reference_dense(q, k, v, log_decay, visible, seg,
                                      self_attention=True)
  real = (seg > 0)[..., None, None]
  np.testing.assert_allclose(jnp.where(real, ours, 0),
                             jnp.where(real, theirs, 0), atol=1e-5, rtol=1e-5)


def test_retnet_bidirectional_weights_are_gamma_to_the_distance():
  """o_i = sum_j gamma_h^|i-j| (q_i . k_j) v_j, written out by hand."""
  length = 7
  q, k, v, _ = _arrays(length, 1, batch=1)
  gamma_H = 1.0 - 2.0 ** (-5.0 - np.arange(HEADS))
  extras = retnet.Retention().key_extras(None, jnp.zeros((1, length, 3)),
                                         None, None, HEADS)
  seg = jnp.ones((1, length), jnp.int32)
  ours = decay_scan.bidirectional_scan(q, k, v,
                                       extras['log_decay'][..., None], seg,
                                       CHUNK)
  distance = np.abs(np.arange(length)[:, None] - np.arange(length)[None])
  weights_HxQxK = gamma_H[:, None, None] ** distance[None]
  scores_HxQxK = np.einsum('qhd,khd->hqk', q[0], k[0]) * weights_HxQxK
  expected = np.einsum('hqk,khd->qhd', scores_HxQxK, v[0])
  np.testing.assert_allclose(ours[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('channels', CHANNELS)
@pytest.mark.parametrize('causal', [True, False])
def test_second_sentence_ignores_the_first(causal, channels):
  """Changing every input of sentence 1 leaves sentence 2's outputs."""
  length = 10
  seg = jnp.array([[1] * 5 + [2] * 5], jnp.int32)
  arrays = _arrays(length, channels, batch=1)
  changed = tuple(
      jnp.where((seg == 1)[..., None, None], x + _normal(20 + i, x.shape), x)
      for i, x in enumerate(arrays))

  def run(arrays):
    if causal:
      return decay_scan.causal_scan(*arrays, seg, CHUNK)[0]
    return decay_scan.bidirectional_scan(*arrays, seg, CHUNK)

  before, after = run(arrays), run(changed)
  np.testing.assert_allclose(after[0, 5:], before[0, 5:], atol=1e-6)
  # Sentence 1 itself did change: the comparison above can fail.
  assert float(jnp.max(jnp.abs(after[0, :5] - before[0, :5]))) > 1e-3


def _float64_recurrence(q_LxHxK, k_LxHxK, v_LxHxV, log_decay_LxHxA):
  """S_t = Diag(a_t) S_{t-1} + k_t^T v_t, o_t = q_t S_t in numpy float64."""
  q, k, v, log_decay = (np.asarray(x, np.float64) for x in (
      q_LxHxK, k_LxHxK, v_LxHxV, log_decay_LxHxA))
  state = np.zeros(k.shape[1:] + v.shape[-1:])
  out = np.zeros(v.shape)
  for t in range(q.shape[0]):
    state = (np.exp(log_decay[t])[..., None] * state
             + k[t, :, :, None] * v[t, :, None, :])
    out[t] = np.einsum('hk,hkv->hv', q[t], state)
  return out


@pytest.mark.parametrize('channels', CHANNELS)
def test_gradients_finite_at_8k_tokens_with_extreme_decays(channels):
  """Head 0 forgets almost at once (a = e^-40), head 1 almost never
  (a = 1 - 1e-6): the chunked form stays finite and accurate.

  Its outputs are compared with a float64 recurrence: the float32
  token-by-token scan is itself off by ~1e-2 here (sums of thousands of
  terms), the chunked form by ~2e-4 on outputs up to ~150.
  """
  length = 8192
  q, k, v, _ = (x * 0.5 for x in _arrays(length, channels, batch=1))
  log_decay = jnp.broadcast_to(
      jnp.array([-40.0, -1e-6])[None, None, :, None],
      (1, length, HEADS, channels))
  seg = jnp.ones((1, length), jnp.int32)
  cotangent = _normal(9, v.shape)

  def loss(*arrays):
    out, state = decay_scan.causal_scan(*arrays, seg, 64)
    return jnp.sum(out * cotangent) + jnp.sum(state)

  grads = jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, log_decay)
  for grad in grads:
    assert bool(jnp.all(jnp.isfinite(grad)))
  out, _ = decay_scan.causal_scan(q, k, v, log_decay, seg, 64)
  np.testing.assert_allclose(
      out[0], _float64_recurrence(q[0], k[0], v[0], log_decay[0]),
      atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize(
    'name', ['retnet', 'gla', 'mamba2', 'deltanet', 'gated_deltanet'])
def test_recurrent_form_trains_the_same_function_as_the_chunked_form(name):
  # The `form` option swaps the causal computation, nothing else: the same
  # parameters give the same outputs over packed sentences and padding.
  from attention_jax import attention  # pylint: disable=g-import-not-at-top
  from attention_jax.attention import frame  # pylint: disable=g-import-not-at-top

  def layer(form):
    options = attention.MECHANISMS.options(name, {'chunk_size': 3,
                                                  'form': form})
    return frame.MultiHeadAttention(
        frame.AttentionConfig(mechanism=name, options=options,
                              num_heads=HEADS, head_dim=DEPTH,
                              deterministic=True),
        causal=True, self_attention=True)

  x = _normal(0, (2, 11, HEADS * DEPTH))
  seg = _segments(11)
  params = layer('chunked').init(jax.random.key(1), x, x, seg, seg)
  outputs = [layer(form).apply(params, x, x, seg, seg)
             for form in ('chunked', 'recurrent')]
  np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match="form='fused'.*'chunked', 'recurrent'"):
    attention.MECHANISMS.options(name, {'form': 'fused'})


def test_retnet_with_rope_decodes_as_its_full_pass_and_is_shift_invariant():
  # xPos's rotation is RoPE's: retention then scores q_n . k_m by n - m.
  from attention_jax import attention  # pylint: disable=g-import-not-at-top
  from attention_jax.attention import frame  # pylint: disable=g-import-not-at-top

  def layer(decode=False):
    return frame.MultiHeadAttention(
        frame.AttentionConfig(
            mechanism='retnet', options=attention.MECHANISMS.options(
                'retnet', {'chunk_size': 3}),
            position_scheme='rope', num_heads=HEADS, head_dim=DEPTH,
            deterministic=True, decode=decode),
        causal=True, self_attention=True)

  x = _normal(0, (1, 7, HEADS * DEPTH))
  seg = jnp.ones((1, 7), jnp.int32)
  params = layer().init(jax.random.key(1), x, x, seg, seg)
  full = layer().apply(params, x, x, seg, seg)
  _, cache = layer(True).apply(params, x, x, seg, seg, mutable=['cache'])
  steps = []
  for t in range(7):
    out, cache = layer(True).apply({**params, **cache}, x[:, t:t + 1],
                                   x[:, t:t + 1], seg[:, :1], seg[:, :1],
                                   mutable=['cache'])
    steps.append(out)
  np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=1e-5)
  shifted = jnp.arange(7)[None] + 5
  np.testing.assert_allclose(
      layer().apply(params, x, x, seg, seg, shifted, shifted), full,
      atol=1e-5)
