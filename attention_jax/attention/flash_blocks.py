"""Exact blockwise softmax attention with FlashAttention-2's backward pass.

Forward: Rabe & Staats (2021) / Dao (2023, Algorithm 1): per query block, a
running maximum m_i, running sum l_i and unnormalised output over key blocks;
only the output O and the per-query log-sum-exp L_i = m_i + log l_i are kept.
Backward: Dao (2023), "FlashAttention-2", Algorithm 2: per key block, the
probabilities are recomputed as P_ij = exp(S_ij - L_i), and with
D_i = rowsum(dO_i * O_i)

  dV_j += P_ij^T dO_i,  dP_ij = dO_i V_j^T,  dS_ij = P_ij * (dP_ij - D_i),
  dQ_i += dS_ij K_j,    dK_j += dS_ij^T Q_i

(queries pre-scaled by 1/sqrt(d)). Nothing of size queries x keys is stored,
and the backward does five block matmuls instead of autodiff's replay of the
running-max recurrence.

Key blocks that an `index band` guarantees to be fully masked (the upper
triangle under a causal mask, everything outside a local window) are never
visited: loops run over a per-block range of block indices.
"""

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp

# (q_index_C, k_index_C) -> boolean, broadcastable to [B, H, Cq, Ck]; True
# where a query may see a key. Indices may run past the sequences' ends.
BlockFn = Callable[[jax.Array, jax.Array], jax.Array]
# (before, after), either None when unbounded: the mask allows query i only
# keys j with i' - before <= j <= i' + after, where i' = i + K - Q.
Band = tuple[int | None, int | None]


def flash_attention(query_BxQxHxD, key_BxKxGxD, value_BxKxGxD,
                    block_mask: BlockFn, *, q_chunk: int, kv_chunk: int,
                    index_band: Band = (None, None)):
  """Masked softmax attention, forward and backward one block at a time.

  Equal to `softmax.softmax_weighted_sum` with the mask `block_mask` gives,
  including its rule for a query that may see no key: it averages every key.

  Args:
    query_BxQxHxD: queries.
    key_BxKxGxD: keys with G key/value heads; G divides H.
    value_BxKxGxD: values with G heads.
    block_mask: the mask of a block of query and key indices.
    q_chunk: query block length; Q need not be a multiple of it.
    kv_chunk: key block length; K need not be a multiple of it.
    index_band: a band of indices outside which `block_mask` is False; key
      blocks outside it are skipped. (None, 0) is the causal mask's.

  Returns:
    The attended values, [B, Q, H, D], in the dtype of the values.
  """
  batch, q_len, num_heads, depth = query_BxQxHxD.shape
  kv_len, num_kv_heads = key_BxKxGxD.shape[1:3]
  q_chunk, kv_chunk = min(q_chunk, q_len), min(kv_chunk, kv_len)
  num_q, num_kv = -(-q_len // q_chunk), -(-kv_len // kv_chunk)
  group = num_heads // num_kv_heads
  scale = jnp.asarray(depth**-0.5, query_BxQxHxD.dtype)
  # Queries of one key/value head side by side: [N, B, G, R, C, D].
  q = _blocks(query_BxQxHxD * scale, num_q, q_chunk).reshape(
      num_q, batch, q_chunk, num_kv_heads, group, depth
  ).transpose(0, 1, 3, 4, 2, 5)
  k, v = (_blocks(x, num_kv, kv_chunk).transpose(0, 1, 3, 2, 4)
          for x in (key_BxKxGxD, value_BxKxGxD))
  geometry = _Geometry(q_len, kv_len, q_chunk, kv_chunk, num_q, num_kv,
                       tuple(index_band))
  out = _attend(geometry, block_mask, q, k, v)
  out = out.transpose(0, 1, 4, 2, 3, 5).reshape(
      num_q, batch, q_chunk, num_heads, depth)
  out = jnp.moveaxis(out, 0, 1).reshape(batch, num_q * q_chunk, num_heads,
                                        depth)
  return out[:, :q_len].astype(value_BxKxGxD.dtype)


def _blocks(x_BxL, num: int, size: int):
  """[B, L, ...] -> [num, B, size, ...], zero-padding L up to num * size."""
  widths = [(0, 0)] * x_BxL.ndim
  widths[1] = (0, num * size - x_BxL.shape[1])
  x = jnp.pad(x_BxL, widths)
  return jnp.moveaxis(x.reshape(x.shape[0], num, size, *x.shape[2:]), 1, 0)


@dataclasses.dataclass(frozen=True)
class _Geometry:
  """Static sizes of the blocking and the band (hashable, for custom_vjp)."""

  q_len: int
  kv_len: int
  q_chunk: int
  kv_chunk: int
  num_q: int
  num_kv: int
  band: Band

  def kv_blocks(self, q_block):
    """[first, stop) of the key blocks that query block `q_block` can see:
    Python ints without a band (a loop of static length, which XLA knows
    the trip count of), else arrays."""
    before, after = self.band
    if before is None and after is None:
      return 0, self.num_kv
    offset = self.kv_len - self.q_len
    start = 0 if before is None else (
        q_block * self.q_chunk + offset - before)
    end = self.kv_len - 1 if after is None else (
        (q_block + 1) * self.q_chunk - 1 + offset + after)
    return _block_range(start, end, self.kv_len, self.kv_chunk)

  def q_blocks(self, kv_block):
    """[first, stop) of the query blocks that can see key block `kv_block`
    (Python ints without a band, as `kv_blocks`)."""
    before, after = self.band
    if before is None and after is None:
      return 0, self.num_q
    offset = self.kv_len - self.q_len
    start = 0 if after is None else kv_block * self.kv_chunk - offset - after
    end = self.q_len - 1 if before is None else (
        (kv_block + 1) * self.kv_chunk - 1 - offset + before)
    return _block_range(start, end, self.q_len, self.q_chunk)


def _block_range(start, end, length: int, chunk: int):
  """[first, stop) of the blocks holding indices start..end of a sequence
  (none when no index in that range is in the sequence)."""
  start = jnp.clip(start, 0, length)
  end = jnp.clip(end, -1, length - 1)
  return start // chunk, jnp.where(start > end, start // chunk,
                                   end // chunk + 1)


def _scores(geometry, block_mask, q_block, kv_block, q_i, k_j):
  """Masked scores of one block, [B, G, R, Cq, Ck] float32, -inf where
  masked (so masked keys weigh exactly zero in every finite row)."""
  s = jnp.einsum('bgrqd,bgkd->bgrqk', q_i, k_j,
                 preferred_element_type=jnp.float32)
  q_index_C = q_block * geometry.q_chunk + jnp.arange(geometry.q_chunk)
  k_index_C = kv_block * geometry.kv_chunk + jnp.arange(geometry.kv_chunk)
  allowed = jnp.asarray(block_mask(q_index_C, k_index_C))
  allowed = allowed.reshape((1,) * (4 - allowed.ndim) + allowed.shape)
  if allowed.shape[1] == 1:
    allowed = allowed[:, :, None]
  else:
    allowed = allowed.reshape(allowed.shape[0], s.shape[1], s.shape[2],
                              *allowed.shape[2:])
  allowed &= (k_index_C < geometry.kv_len)[None, None, None, None]
  return jnp.where(allowed, s, -jnp.inf)


def _forward(geometry, block_mask, q, k, v):
  """Output [Nq, B, G, R, Cq, D] (float32) and log-sum-exp [Nq, B, G, R, Cq],
  -inf for queries that see no key."""

  def query_block(inputs):
    q_block, q_i = inputs
    row_shape = q_i.shape[:-1]

    def key_block(kv_block, carry):
      acc, row_max, row_sum = carry
      s = _scores(geometry, block_mask, q_block, kv_block, q_i, k[kv_block])
      new_max = jnp.maximum(row_max, s.max(-1))
      # A row that has seen no allowed key yet has no finite maximum.
      safe_max = jnp.where(jnp.isneginf(new_max), 0.0, new_max)
      p = jnp.exp(s - safe_max[..., None])
      rescale = jnp.exp(row_max - safe_max)
      acc = acc * rescale[..., None] + jnp.einsum(
          'bgrqk,bgkd->bgrqd', p.astype(v.dtype), v[kv_block],
          preferred_element_type=jnp.float32)
      return acc, new_max, row_sum * rescale + p.sum(-1)

    first, stop = geometry.kv_blocks(q_block)
    acc, row_max, row_sum = jax.lax.fori_loop(first, stop, key_block, (
        jnp.zeros(q_i.shape, jnp.float32),
        jnp.full(row_shape, -jnp.inf),
        jnp.zeros(row_shape, jnp.float32),
    ))
    seen = row_sum > 0
    out = acc / jnp.where(seen, row_sum, 1.0)[..., None]
    return out, jnp.where(seen, row_max + jnp.log(row_sum), -jnp.inf)

  out, lse = jax.lax.map(query_block, (jnp.arange(geometry.num_q), q))
  # softmax_weighted_sum's rule: a query that sees no key averages them all.
  mean_value = v.astype(jnp.float32).sum((0, 3)) / geometry.kv_len
  out = jnp.where(jnp.isneginf(lse)[..., None],
                  mean_value[None, :, :, None, None], out)
  return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _attend(geometry, block_mask, q, k, v):
  return _forward(geometry, block_mask, q, k, v)[0].astype(v.dtype)


def _attend_fwd(geometry, block_mask, q, k, v):
  out, lse = _forward(geometry, block_mask, q, k, v)
  out = out.astype(v.dtype)
  return out, (q, k, v, out, lse)


def _attend_bwd(geometry, block_mask, residuals, d_out):
  q, k, v, out, lse = residuals
  d_out = d_out.astype(jnp.float32)
  delta = (d_out * out.astype(jnp.float32)).sum(-1)
  no_key = jnp.isneginf(lse)
  # +inf makes P = 0 in rows that see no key; their uniform average's
  # gradient (only towards values) is added below.
  lse = jnp.where(no_key, jnp.inf, lse)

  def key_block(d_q, inputs):
    kv_block, k_j, v_j = inputs

    def query_block(q_block, carry):
      d_q, d_k_t, d_v_t = carry
      q_i, d_out_i = q[q_block], d_out[q_block]
      s = _scores(geometry, block_mask, q_block, kv_block, q_i, k_j)
      p = jnp.exp(s - lse[q_block][..., None])
      # dV and dK are accumulated transposed, [B, G, D, Ck]: XLA's CPU dot
      # contracts P's query axis about twice as fast into that layout.
      d_v_t += jnp.einsum('bgrqk,bgrqd->bgdk', p.astype(q.dtype),
                          d_out_i.astype(q.dtype),
                          preferred_element_type=jnp.float32)
      d_p = jnp.einsum('bgrqd,bgkd->bgrqk', d_out_i, v_j,
                       preferred_element_type=jnp.float32)
      d_s = (p * (d_p - delta[q_block][..., None])).astype(q.dtype)
      # The block index is in range: a plain update, not a checked scatter.
      d_q = jax.lax.dynamic_update_index_in_dim(d_q, d_q[q_block] + jnp.einsum(
          'bgrqk,bgkd->bgrqd', d_s, k_j, preferred_element_type=jnp.float32),
                                                q_block, 0)
      d_k_t += jnp.einsum('bgrqk,bgrqd->bgdk', d_s, q_i,
                          preferred_element_type=jnp.float32)
      return d_q, d_k_t, d_v_t

    zeros = jnp.zeros(jnp.swapaxes(k_j, -1, -2).shape, jnp.float32)
    first, stop = geometry.q_blocks(kv_block)
    d_q, d_k_t, d_v_t = jax.lax.fori_loop(first, stop, query_block,
                                          (d_q, zeros, zeros))
    return d_q, (jnp.swapaxes(d_k_t, -1, -2), jnp.swapaxes(d_v_t, -1, -2))

  d_q, (d_k, d_v) = jax.lax.scan(
      key_block, jnp.zeros(q.shape, jnp.float32),
      (jnp.arange(geometry.num_kv), k, v))
  # d(mean of all values)/d(each real value) = 1 / K per such query.
  d_mean = jnp.where(no_key[..., None], d_out, 0.0).sum((0, 3, 4))
  real_key = (jnp.arange(geometry.num_kv * geometry.kv_chunk)
              < geometry.kv_len).reshape(geometry.num_kv, 1, 1,
                                         geometry.kv_chunk, 1)
  d_v += jnp.where(real_key, d_mean[None, :, :, None] / geometry.kv_len, 0.0)
  return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype)


_attend.defvjp(_attend_fwd, _attend_bwd)
