"""Exact softmax attention in linear memory (Rabe & Staats, 2021).

"Self-attention Does Not Need O(n^2) Memory": queries are processed one chunk
at a time, and for each query chunk the keys one chunk at a time, carrying a
running maximum and a running sum of exponentials per query (log-sum-exp
accumulation), so the result is ordinary softmax attention, not an
approximation. No query-by-key array is formed at full size: each block's
mask is computed from that block's segment ids and indices.

Without dropout or a score bias the blocks run in `flash_blocks`: a custom
backward pass from FlashAttention-2 (Dao, 2023) that recomputes each block's
probabilities from the saved log-sum-exp, and skips the key blocks a causal
mask or local band hides. With attention dropout or a score bias (which may
be learned and need a gradient), the block loop is differentiated by JAX,
with `jax.checkpoint` around the per-block and per-query-chunk functions so
the backward pass recomputes block scores instead of storing them. Either way
forward and backward memory grow linearly with sequence length.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from attention_jax.attention import base
from attention_jax.attention import flash_blocks
from attention_jax.attention import masks
from attention_jax.attention import registry
from attention_jax.attention import softmax

# The softmax baseline's fill: a query that may see no key at all then
# averages all keys, exactly as `softmax.softmax_weighted_sum` does. Keys
# added by internal padding get -inf instead, so they never count.
_MASKED = jnp.finfo(jnp.float32).min

# (q_index_C, k_index_C) -> array broadcastable to [B, H, Cq, Ck]. Indices
# count from 0 in the unpadded sequences and may run past their ends.
BlockFn = Callable[[jax.Array, jax.Array], jax.Array]


def sliced_block_fn(dense) -> BlockFn:
  """Block function of a mask or bias array broadcastable to [B, H, Q, K].

  Size-1 query or key axes stay size 1, so a broadcast mask (decoding, key
  padding) costs nothing; a full Q x K array keeps its quadratic memory.
  """

  def block(q_index_C, k_index_C):
    x = dense
    if x.shape[-2] != 1:
      x = jnp.take(x, q_index_C, axis=-2, mode='clip')
    if x.shape[-1] != 1:
      x = jnp.take(x, k_index_C, axis=-1, mode='clip')
    return x

  return block


def _chunked(x_BxL, num: int, size: int):
  """[B, L, ...] -> [num, B, size, ...], zero-padding L up to num * size."""
  widths = [(0, 0)] * x_BxL.ndim
  widths[1] = (0, num * size - x_BxL.shape[1])
  x = jnp.pad(x_BxL, widths)
  x = x.reshape(x.shape[0], num, size, *x.shape[2:])
  return jnp.moveaxis(x, 1, 0)


def blockwise_attention(query_BxQxHxD, key_BxKxGxD, value_BxKxGxD,
                        block_mask: BlockFn, *, chunk_size: int,
                        block_bias: BlockFn | None = None,
                        index_band: flash_blocks.Band | None = None,
                        dropout_rate: float = 0.0, dropout_rng=None):
  """Masked softmax attention, one (query chunk, key chunk) block at a time.

  Args:
    query_BxQxHxD: queries.
    key_BxKxGxD: keys with G key/value heads; G divides H.
    value_BxKxGxD: values with G heads.
    block_mask: True where a query may attend to a key.
    chunk_size: longest query chunk and key chunk; lengths need not be
      multiples of it (they are padded internally).
    block_bias: optional float32 score bias, added before masking.
    index_band: optional (before, after), either None when unbounded: the
      mask allows query i only keys j with i' - before <= j <= i' + after,
      where i' = i + K - Q; then only the key chunks overlapping that band
      are visited ((None, 0): causal; local attention's window).
    dropout_rate: attention dropout rate on the probabilities.
    dropout_rng: PRNG key for that dropout.

  Returns:
    The attended values, [B, Q, H, D], in the dtype of the values.
  """
  if block_bias is None and dropout_rate == 0:
    return flash_blocks.flash_attention(
        query_BxQxHxD, key_BxKxGxD, value_BxKxGxD, block_mask,
        q_chunk=chunk_size, kv_chunk=chunk_size,
        index_band=index_band or (None, None))
  if index_band is not None and None in index_band:
    index_band = None  # The fixed-step loop below needs a bounded band.
  return _checkpointed_blocks(
      query_BxQxHxD, key_BxKxGxD, value_BxKxGxD, block_mask,
      chunk_size=chunk_size, block_bias=block_bias, index_band=index_band,
      dropout_rate=dropout_rate, dropout_rng=dropout_rng)


def _checkpointed_blocks(query_BxQxHxD, key_BxKxGxD, value_BxKxGxD,
                         block_mask: BlockFn, *, chunk_size: int,
                         block_bias: BlockFn | None,
                         index_band: tuple[int, int] | None,
                         dropout_rate: float, dropout_rng):
  """`blockwise_attention` differentiated by JAX through `jax.checkpoint`:
  what score biases and dropout need (arguments as there, with a band of
  finite bounds or None)."""
  batch, q_len, num_heads, depth = query_BxQxHxD.shape
  kv_len = key_BxKxGxD.shape[1]
  q_chunk, kv_chunk = min(chunk_size, q_len), min(chunk_size, kv_len)
  num_q_chunks, num_kv_chunks = -(-q_len // q_chunk), -(-kv_len // kv_chunk)
  k_chunks = _chunked(key_BxKxGxD, num_kv_chunks, kv_chunk)
  v_chunks = _chunked(value_BxKxGxD, num_kv_chunks, kv_chunk)

  num_steps, first_kv_chunk = num_kv_chunks, None
  if index_band is not None:
    before, after = index_band
    # Key chunks touched by the band of one query chunk, at most.
    band_steps = (q_chunk - 1 + before + after) // kv_chunk + 2
    if band_steps < num_kv_chunks:
      num_steps = band_steps
      first_kv_chunk = lambda q_chunk_index: (  # noqa: E731
          q_chunk_index * q_chunk + kv_len - q_len - before
      ) // kv_chunk

  def key_step(q_BxCxHxD, q_index_C, q_chunk_index, carry, inputs):
    acc_BxHxCxD, max_BxHxC, sum_BxHxC = carry
    kv_chunk_index, k_BxCxGxD, v_BxCxGxD = inputs
    k_index_C = kv_chunk_index * kv_chunk + jnp.arange(kv_chunk)
    v_BxCxHxD = base.repeat_kv_heads(v_BxCxGxD, num_heads)
    logits = softmax.dot_product_scores(
        q_BxCxHxD, base.repeat_kv_heads(k_BxCxGxD, num_heads)
    ).astype(jnp.float32)
    if block_bias is not None:
      logits += block_bias(q_index_C, k_index_C)
    logits = jnp.where(block_mask(q_index_C, k_index_C), logits, _MASKED)
    in_range_C = (k_index_C >= 0) & (k_index_C < kv_len)
    logits = jnp.where(in_range_C, logits, -jnp.inf)
    # The result does not depend on which maximum is subtracted.
    new_max = jnp.maximum(max_BxHxC, jax.lax.stop_gradient(logits.max(-1)))
    # A row whose visited keys are all padding has no finite maximum yet.
    safe_max = jnp.where(jnp.isneginf(new_max), 0.0, new_max)
    probs = jnp.exp(logits - safe_max[..., None])
    rescale = jnp.exp(max_BxHxC - safe_max)
    sum_BxHxC = sum_BxHxC * rescale + probs.sum(-1)
    if dropout_rate > 0:
      rng = jax.random.fold_in(
          jax.random.fold_in(dropout_rng, q_chunk_index), kv_chunk_index
      )
      keep = jax.random.bernoulli(rng, 1.0 - dropout_rate, probs.shape)
      probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    acc_BxHxCxD = acc_BxHxCxD * rescale[..., None] + jnp.einsum(
        'bhqk,bkhd->bhqd', probs.astype(v_BxCxHxD.dtype), v_BxCxHxD,
        preferred_element_type=jnp.float32,
    )
    return (acc_BxHxCxD, new_max, sum_BxHxC), None

  def attend_query_chunk(inputs):
    q_chunk_index, q_BxCxHxD = inputs
    q_index_C = q_chunk_index * q_chunk + jnp.arange(q_chunk)
    if first_kv_chunk is None:
      kv_chunk_ids = jnp.arange(num_kv_chunks)
      keys, values = k_chunks, v_chunks
    else:
      kv_chunk_ids = first_kv_chunk(q_chunk_index) + jnp.arange(num_steps)
      # Chunks outside the sequence are read clipped and masked as padding.
      stored = jnp.clip(kv_chunk_ids, 0, num_kv_chunks - 1)
      keys, values = k_chunks[stored], v_chunks[stored]
    init = (
        jnp.zeros((batch, num_heads, q_chunk, depth), jnp.float32),
        jnp.full((batch, num_heads, q_chunk), -jnp.inf),
        jnp.zeros((batch, num_heads, q_chunk), jnp.float32),
    )
    step = jax.checkpoint(
        lambda carry, xs: key_step(
            q_BxCxHxD, q_index_C, q_chunk_index, carry, xs
        ),
        prevent_cse=False,
    )
    (acc_BxHxCxD, _, sum_BxHxC), _ = jax.lax.scan(
        step, init, (kv_chunk_ids, keys, values)
    )
    # Only internal padding rows can have an empty sum; they are dropped.
    out_BxHxCxD = acc_BxHxCxD / jnp.where(sum_BxHxC == 0, 1.0, sum_BxHxC)[
        ..., None
    ]
    return jnp.swapaxes(out_BxHxCxD, 1, 2).astype(value_BxKxGxD.dtype)

  out_NxBxCxHxD = jax.lax.map(
      jax.checkpoint(attend_query_chunk),
      (
          jnp.arange(num_q_chunks),
          _chunked(query_BxQxHxD, num_q_chunks, q_chunk),
      ),
  )
  out = jnp.moveaxis(out_NxBxCxHxD, 0, 1).reshape(
      batch, num_q_chunks * q_chunk, num_heads, depth
  )
  return out[:, :q_len]


def chunked_softmax(query_BxQxHxD, key_BxKxGxD, value_BxKxGxD,
                    q_segment_ids_BxQ, kv_segment_ids_BxK, *,
                    causal: bool = False, chunk_size: int = 512,
                    dropout_rate: float = 0.0, dropout_rng=None):
  """Exact softmax attention with a segment (and causal) mask, chunk-wise.

  Equal to softmax attention with `masks.segment_mask` (and
  `masks.causal_mask`), in memory linear in the sequence lengths.
  """
  batch = query_BxQxHxD.shape[0]
  mask = masks.TokenMask(
      q_segment_ids_BxQ, kv_segment_ids_BxK,
      jnp.zeros((batch, query_BxQxHxD.shape[1]), jnp.int32),
      jnp.zeros((batch, key_BxKxGxD.shape[1]), jnp.int32), causal=causal)
  return blockwise_attention(
      query_BxQxHxD, key_BxKxGxD, value_BxKxGxD, mask.block,
      chunk_size=chunk_size, index_band=(None, 0) if causal else None,
      dropout_rate=dropout_rate, dropout_rng=dropout_rng,
  )


@dataclasses.dataclass(frozen=True)
class ChunkedOptions:
  # Query and key chunk length; any value computes the same attention.
  chunk_size: int = 512

  def __post_init__(self):
    if self.chunk_size < 1:
      raise ValueError(f'chunk_size={self.chunk_size} must be at least 1.')


def attend_in_blocks(module, inputs, chunk_size: int, mask: masks.TokenMask,
                     index_band: tuple[int, int] | None = None):
  """`blockwise_attention` of an attention call, with its dropout and bias.

  A score bias (ALiBi, relative positions) arrives from the frame as a full
  array and is sliced block by block: exact, but that array alone keeps its
  quadratic memory.
  """
  bias = inputs.bias_BxHxQxK
  if index_band is None and mask.causal:
    index_band = (None, 0)
  return blockwise_attention(
      inputs.query_BxQxHxD, inputs.key_BxKxGxD, inputs.value_BxKxGxD,
      mask.block, chunk_size=chunk_size,
      block_bias=None if bias is None else sliced_block_fn(bias),
      index_band=index_band,
      # The frame's dropout is a Flax module, which cannot run inside the
      # block loop; the same dropout is redone per block.
      dropout_rate=inputs.dropout_rate,
      dropout_rng=(module.make_rng('dropout') if inputs.dropout_rate > 0
                   else None),
  )


@registry.register('chunked')
class Chunked(softmax.Softmax):
  """Softmax attention computed in `chunk_size` blocks, in linear memory.

  Same parameters, decoding cache and outputs (up to float rounding) as
  `softmax`. The mask stays in per-token form, so no query-by-key array is
  formed; the backward pass recomputes block scores (see the module
  docstring for which backward runs when).
  """

  Options = ChunkedOptions
  RESUMABLE_FIELDS = ('chunk_size',)
  TEST_OPTIONS = {'chunk_size': 3}
  # The block loop's running normaliser has no sink term.
  capabilities = dataclasses.replace(softmax.FAMILY_CAPABILITIES, sink=False)

  def attend(self, module, inputs):
    if inputs.capture_weights is not None:
      # Blocks never hold a whole row of weights; inspection (deterministic)
      # takes softmax's dense path, the same function.
      return super().attend(module, inputs)
    return attend_in_blocks(module, inputs, self.options.chunk_size,
                            inputs.mask)
