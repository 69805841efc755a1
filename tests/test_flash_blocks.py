"""FlashAttention-2 blocks (attention/flash_blocks.py) against jax.nn, outputs
and gradients, and the key blocks they skip against the band's mask."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.attention import chunked
from attention_jax.attention import flash_blocks
from attention_jax.attention import masks
from attention_jax.train import flops

H, D = 4, 8
# float32 rounding of sums over at most a few dozen keys.
_TOLERANCE = 1e-5


def _normal(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape)


def _segments(length):
  """Row 0: two packed sentences then padding; row 1: one padded sentence.

  Padding queries (segment 0) may see no key at all.
  """
  first = (length - 2) // 2
  return jnp.array([
      [1] * first + [2] * (length - 2 - first) + [0, 0],
      [1] * (length - 3) + [0] * 3,
  ], jnp.int32)


def _value_and_grads(attend, q, k, v, weights):
  loss = lambda q, k, v: (attend(q, k, v) * weights).sum()  # noqa: E731
  return attend(q, k, v), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)


@pytest.mark.parametrize('q_len, kv_len', [(11, 11), (12, 12), (5, 11)])
@pytest.mark.parametrize('num_kv_heads', [4, 2])
@pytest.mark.parametrize('causal', [False, True])
def test_outputs_and_gradients_match_jax_nn(causal, num_kv_heads, q_len,
                                            kv_len):
  q = _normal(0, (2, q_len, H, D))
  k, v = (_normal(i, (2, kv_len, num_kv_heads, D)) for i in (1, 2))
  # Every query row is compared, padding rows (which see no key) included.
  weights = _normal(3, q.shape)
  q_seg, kv_seg = _segments(kv_len)[:, -q_len:], _segments(kv_len)
  zeros = lambda seg: jnp.zeros_like(seg)  # noqa: E731
  mask = masks.TokenMask(q_seg, kv_seg, zeros(q_seg), zeros(kv_seg),
                         causal=causal)

  def ours(q, k, v):
    return flash_blocks.flash_attention(
        q, k, v, mask.block, q_chunk=4, kv_chunk=3,
        index_band=(None, 0) if causal else (None, None))

  def reference(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, mask=mask.dense())

  got = jax.jit(lambda *a: _value_and_grads(ours, *a))(q, k, v, weights)
  expected = _value_and_grads(reference, q, k, v, weights)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, atol=_TOLERANCE)


def test_a_query_that_sees_no_key_averages_every_key():
  q, k, v = (_normal(i, (1, 6, H, D)) for i in range(3))
  sees_nothing = lambda q_index, k_index: (  # noqa: E731
      (q_index[:, None] != 2) & (k_index[None, :] >= 0))[None, None]
  out, (_, _, d_v) = _value_and_grads(
      lambda q, k, v: flash_blocks.flash_attention(
          q, k, v, sees_nothing, q_chunk=4, kv_chunk=4),
      q, k, v, jnp.zeros(q.shape).at[:, 2].set(1.0))
  np.testing.assert_allclose(out[:, 2], v.mean(1), atol=_TOLERANCE)
  np.testing.assert_allclose(d_v, jnp.full(v.shape, 1 / 6), atol=_TOLERANCE)


@pytest.mark.parametrize('band', [(None, 0), (2, 0), (3, 1), (None, None)])
@pytest.mark.parametrize('q_len, kv_len', [(13, 13), (4, 13)])
def test_visited_blocks_are_those_the_band_does_not_hide(band, q_len, kv_len):
  before, after = band
  q_chunk, kv_chunk = 4, 3
  offsets = (np.arange(kv_len)[None, :]
             - np.arange(q_len)[:, None] - (kv_len - q_len))
  in_band = ((offsets >= -(before if before is not None else kv_len))
             & (offsets <= (after if after is not None else kv_len)))
  geometry = flash_blocks._Geometry(  # pylint: disable=protected-access
      q_len, kv_len, q_chunk, kv_chunk, -(-q_len // q_chunk),
      -(-kv_len // kv_chunk), band)
  for i, j in itertools.product(range(geometry.num_q),
                                range(geometry.num_kv)):
    any_allowed = in_band[i * q_chunk:(i + 1) * q_chunk,
                          j * kv_chunk:(j + 1) * kv_chunk].any()
    first, stop = geometry.kv_blocks(i)
    assert (first <= j < stop) == any_allowed, (i, j)
    first, stop = geometry.q_blocks(j)
    assert (first <= i < stop) == any_allowed, (i, j)


def test_score_bias_gradient_matches_jax_nn():
  """A bias may be learned (relative positions): it takes the
  checkpointed path, whose gradient reaches it."""
  q, k, v = (_normal(i, (1, 7, H, D)) for i in range(3))
  bias = _normal(3, (1, H, 7, 7))
  weights = _normal(4, q.shape)
  seg = jnp.ones((1, 7), jnp.int32)
  mask = masks.TokenMask(seg, seg, seg, seg, causal=True)

  def ours(q, k, v, bias):
    return chunked.blockwise_attention(
        q, k, v, mask.block, chunk_size=3,
        block_bias=chunked.sliced_block_fn(bias), index_band=(None, 0))

  def reference(q, k, v, bias):
    return jax.nn.dot_product_attention(q, k, v, bias=bias,
                                        mask=mask.dense())

  def grads(attend):
    return jax.grad(lambda *a: (attend(*a) * weights).sum(),
                    argnums=(0, 1, 2, 3))(q, k, v, bias)

  for a, b in zip(grads(ours), grads(reference)):
    np.testing.assert_allclose(a, b, atol=_TOLERANCE)


def test_matmul_flops_of_unbanded_attention_are_counted():
  """Without a band every block loop has a static length, so the traced
  count sees every block product (with run-time loop bounds it could not,
  and benchmarks fell back to XLA's count of one loop body, about 1/16 of
  the work at 16k): two products per block pair forward, five more
  backward (FlashAttention-2's dV, dP, dQ, dK and the recomputed scores)."""
  batch, length, chunk = 1, 32, 8
  q, k, v = (_normal(i, (batch, length, H, D)) for i in range(3))
  attend = lambda q, k, v: flash_blocks.flash_attention(  # noqa: E731
      q, k, v, lambda i, j: jnp.ones((), bool), q_chunk=chunk,
      kv_chunk=chunk)
  product = 2 * batch * H * length * length * D
  assert flops.traced_matmul_flops(attend, q, k, v) == 2 * product
  assert flops.traced_matmul_flops(
      jax.grad(lambda *a: attend(*a).sum(), argnums=(0, 1, 2)), q, k, v
  ) == 7 * product
