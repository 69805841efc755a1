"""The (gated) delta rule in its recurrent, chunked and bidirectional forms.

Shared by `deltanet.py` (Schlag et al., 2021; Yang et al., 2024, NeurIPS,
"Parallelizing Linear Transformers with the Delta Rule over Sequence
Length") and `gated_deltanet.py` (Yang et al., 2025, ICLR, "Gated Delta
Networks"). Not a registered mechanism.

Layout: the state of a head is M = Sᵀ, key dimension by value dimension
(state_BxHxKxV), where the papers' S is value by key. In this layout, with
the per-token write strength β_t in (0, 1) and decay α_t = exp(log α_t) in
(0, 1] (α = 1 for DeltaNet):

  M_t = α_t (I − β_t k_t k_tᵀ) M_{t−1} + β_t k_t v_tᵀ,    o_t = M_tᵀ q_t,

which is the papers' S_t = α_t S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ and
o_t = S_t q_t. Keys are expected L2-normalised (‖k‖ = 1 keeps
I − β k kᵀ a contraction).

Packing and padding: segments are contiguous runs of equal ids; the state is
0 before a segment's first token. Callers give padding tokens β = 0 and
log α = 0, so that they leave the state as it is.

Chunked form (`chunked`, Yang et al. 2024, sec. 3, the WY/UT form): with
γ_t the product of α over the chunk up to t, M_0 the state entering the
chunk, and the pseudo-values u_t = β_t (v_t − α_t M_{t−1}ᵀ k_t),

  M_t = γ_t M_0 + Σ_{j≤t} (γ_t/γ_j) k_j u_jᵀ,
  (I + A) U = diag(β) V − diag(β γ) K M_0,  A_tj = β_t (γ_t/γ_j) k_t·k_j
  for j < t (strictly lower triangular),

so U = Ũ − W M_0 with Ũ = (I + A)⁻¹ diag(β) V and W = (I + A)⁻¹ diag(β γ) K,
found by one triangular inversion per chunk, in parallel over chunks. Only the
cheap M_0-dependent part runs in a scan over chunks. The ratios γ_t/γ_j are
exp of differences of in-chunk cumulative log α, formed only where t ≥ j (so
they never exceed 1). Segment boundaries inside a chunk mask A and the
output matrix to same-segment pairs, and M_0 reaches only the tokens that
continue the segment open when the chunk began.
"""

import jax
import jax.numpy as jnp


def recurrent_step(state_BxHxKxV, query_BxHxK, key_BxHxK, value_BxHxV,
                   beta_BxH, log_alpha_BxH):
  """One token of the recurrence: (o_t [B, H, V], M_t [B, H, K, V])."""
  decayed = jnp.exp(log_alpha_BxH)[..., None, None] * state_BxHxKxV
  # α (I − β k kᵀ) M + β k vᵀ = αM + β k (v − (αM)ᵀ k)ᵀ.
  recalled_BxHxV = jnp.einsum('bhk,bhkv->bhv', key_BxHxK, decayed)
  correction_BxHxV = beta_BxH[..., None] * (value_BxHxV - recalled_BxHxV)
  state = decayed + jnp.einsum('bhk,bhv->bhkv', key_BxHxK, correction_BxHxV)
  return jnp.einsum('bhk,bhkv->bhv', query_BxHxK, state), state


def recurrent(query_BxLxHxK, key_BxLxHxK, value_BxLxHxV, beta_BxLxH,
              log_alpha_BxLxH, segment_ids_BxL, *, reverse=False,
              read_before_write=False):
  """The recurrence token by token (references, tests).

  Args:
    query_BxLxHxK, key_BxLxHxK, value_BxLxHxV: heads, float32.
    beta_BxLxH, log_alpha_BxLxH: per-token write strength and log decay.
    segment_ids_BxL: contiguous runs; the state restarts at 0 whenever the
      id differs from the previous token's (in scan order).
    reverse: scan from the last token to the first.
    read_before_write: o_t = M_{t−1}ᵀ q_t, the state before token t's write
      (its own key excluded), instead of M_tᵀ q_t.

  Returns:
    (outputs [B, L, H, V], states [B, L, H, K, V]: the state after each
    token's write).
  """
  batch, length, heads, depth = key_BxLxHxK.shape
  previous = jnp.roll(segment_ids_BxL, 1 if not reverse else -1, axis=1)
  edge = length - 1 if reverse else 0
  starts_BxL = (segment_ids_BxL != previous).at[:, edge].set(True)

  def token(state, inputs):
    query, key, value, beta, log_alpha, starts = inputs
    state = jnp.where(starts[:, None, None, None], 0.0, state)
    before = jnp.einsum('bhk,bhkv->bhv', query, state)
    out, state = recurrent_step(state, query, key, value, beta, log_alpha)
    return state, (before if read_before_write else out, state)

  inputs = tuple(jnp.moveaxis(x, 1, 0) for x in (
      query_BxLxHxK, key_BxLxHxK, value_BxLxHxV, beta_BxLxH,
      log_alpha_BxLxH, starts_BxL))
  state = jnp.zeros((batch, heads, depth, value_BxLxHxV.shape[-1]),
                    jnp.float32)
  _, (outputs, states) = jax.lax.scan(token, state, inputs, reverse=reverse)
  return jnp.moveaxis(outputs, 0, 1), jnp.moveaxis(states, 0, 1)


def chunk_factors(key_BxCxK, value_BxCxV, beta_BxC, log_gamma_BxC,
                  continues_BxC, same_segment_BxCxC):
  """Ũ and W of one chunk (leading axes shared): U = Ũ − W M_0.

  Args:
    key_BxCxK, value_BxCxV: the chunk's keys and values.
    beta_BxC: write strengths.
    log_gamma_BxC: in-chunk cumulative log α, log γ_t.
    continues_BxC: the token belongs to the segment open before the chunk
      (only those tokens see M_0).
    same_segment_BxCxC: tokens t and j belong to one segment.

  Returns:
    (Ũ [.., C, V], W [.., C, K]).
  """
  chunk = key_BxCxK.shape[-2]
  earlier = _lead(jnp.tril(jnp.ones((chunk, chunk), bool), -1),
                  same_segment_BxCxC.ndim)
  a_BxCxC = (beta_BxC[..., :, None]
             * jnp.einsum('...tk,...jk->...tj', key_BxCxK, key_BxCxK)
             * _decay(log_gamma_BxC, same_segment_BxCxC & earlier))
  gamma_BxC = jnp.where(continues_BxC, jnp.exp(log_gamma_BxC), 0.0)
  rhs = jnp.concatenate([beta_BxC[..., None] * value_BxCxV,
                         (beta_BxC * gamma_BxC)[..., None] * key_BxCxK], -1)
  solved = jnp.einsum('...tj,...jd->...td', unit_lower_inverse(a_BxCxC), rhs)
  return jnp.split(solved, [value_BxCxV.shape[-1]], axis=-1)


def unit_lower_inverse(a_BxCxC):
  """(I + A)⁻¹ for strictly lower triangular A [.., C, C], by blocks.

  Doubles the block size from 1: with the inverses X₁, X₂ of two adjacent
  diagonal blocks and A₂₁ the block between them, the inverse of the block
  they form is [[X₁, 0], [−X₂ A₂₁ X₁, X₂]]. ⌈log₂ C⌉ rounds of batched
  matmuls, differentiated by JAX like any matmul (the blocked triangular
  inversion of LAPACK's trtri, and the block merging of the UT transform in
  Yang et al. 2024). `jax.scipy.linalg.solve_triangular` is not used: on
  XLA:CPU (jax 0.10.2) its forward pass over [1, 8, 64, 32, 32] is fast, but
  its gradient with a 128-column right-hand side did not finish in minutes.
  """
  chunk = a_BxCxC.shape[-1]
  size = 1 << max(chunk - 1, 0).bit_length()
  lead = a_BxCxC.shape[:-2]
  # Zero rows and columns past C: their part of the inverse is I.
  a = jnp.pad(a_BxCxC, [(0, 0)] * len(lead) + [(0, size - chunk)] * 2)
  inverse = jnp.ones(lead + (size, 1, 1), a.dtype)  # Blocks of size 1.
  block = 1
  while block < size:
    pairs = size // (2 * block)
    # The diagonal blocks of size 2·block: [.., pairs, 2·block, 2·block].
    tiles = a.reshape(lead + (pairs, 2 * block, pairs, 2 * block))
    diagonal = jnp.moveaxis(jnp.diagonal(tiles, axis1=-4, axis2=-2), -1, -3)
    inverse = inverse.reshape(lead + (pairs, 2, block, block))
    upper, lower = inverse[..., 0, :, :], inverse[..., 1, :, :]
    between = jnp.einsum('...ij,...jk,...kl->...il', lower,
                         diagonal[..., block:, :block], upper)
    inverse = jnp.concatenate([
        jnp.concatenate([upper, jnp.zeros_like(upper)], -1),
        jnp.concatenate([-between, lower], -1)], -2)
    block *= 2
  return inverse.reshape(lead + (size, size))[..., :chunk, :chunk]


def _lead(x, ndim: int):
  """x with leading unit axes up to `ndim` (ranks are never promoted)."""
  return x.reshape((1,) * (ndim - x.ndim) + x.shape)


def _decay(log_gamma_BxC, where_BxCxC):
  """γ_t / γ_j at (t, j) where `where_BxCxC` (only t ≥ j), else 0."""
  log_ratio = log_gamma_BxC[..., :, None] - log_gamma_BxC[..., None, :]
  # Zeroed before exp: the excluded t < j would overflow (and NaN grads).
  return jnp.where(where_BxCxC, jnp.exp(jnp.where(where_BxCxC, log_ratio,
                                                  0.0)), 0.0)


def chunked(query_BxLxHxK, key_BxLxHxK, value_BxLxHxV, beta_BxLxH,
            log_alpha_BxLxH, segment_ids_BxL, chunk_size: int):
  """The causal recurrence, chunk-parallel (see the module docstring).

  Args: as `recurrent` (forwards, reading after the write), and chunk_size,
  the tokens per chunk (any value computes the same function).

  Returns:
    (outputs [B, L, H, V], the state after the last token [B, H, K, V]: that
    of the segment open at the end of each row).
  """
  batch, length = segment_ids_BxL.shape
  chunk = min(chunk_size, length)
  pad = -length % chunk
  num_chunks = (length + pad) // chunk

  def split(x, mode='constant'):
    # [B, L, H, ...] -> [B, H, N, C, ...]; the tail continues the last
    # segment with β = 0 and log α = 0, which leaves the state unchanged.
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), mode=mode)
    x = x.reshape(batch, num_chunks, chunk, *x.shape[2:])
    return jnp.moveaxis(x, 3, 1) if x.ndim > 3 else x

  q, k, v = (split(x) for x in (query_BxLxHxK, key_BxLxHxK, value_BxLxHxV))
  beta_BxHxNxC, log_alpha = split(beta_BxLxH), split(log_alpha_BxLxH)
  seg_BxNxC = split(segment_ids_BxL, mode='edge')
  log_gamma_BxHxNxC = jnp.cumsum(log_alpha, axis=-1)
  same_BxNxCxC = seg_BxNxC[..., :, None] == seg_BxNxC[..., None, :]
  # A segment reaching back before chunk n is the one open at chunk n − 1's
  # end (segments are contiguous); nothing is open before the first chunk.
  open_before_BxN = jnp.pad(seg_BxNxC[:, :-1, -1], [(0, 0), (1, 0)],
                            constant_values=-1)
  continues_BxNxC = seg_BxNxC == open_before_BxN[..., None]

  u_tilde, w = chunk_factors(k, v, beta_BxHxNxC, log_gamma_BxHxNxC,
                             continues_BxNxC[:, None],
                             same_BxNxCxC[:, None])
  upto = _lead(jnp.tril(jnp.ones((chunk, chunk), bool)), 5)
  scores_BxHxNxCxC = (jnp.einsum('bhntk,bhnjk->bhntj', q, k)
                      * _decay(log_gamma_BxHxNxC,
                               same_BxNxCxC[:, None] & upto))
  gamma_BxHxNxC = jnp.exp(log_gamma_BxHxNxC)
  q_from_state = q * jnp.where(continues_BxNxC[:, None], gamma_BxHxNxC,
                               0.0)[..., None]
  # What each token's write leaves in the chunk's final state.
  in_last_BxNxC = seg_BxNxC == seg_BxNxC[..., -1:]
  to_end_BxHxNxC = jnp.where(
      in_last_BxNxC[:, None],
      jnp.exp(log_gamma_BxHxNxC[..., -1:] - log_gamma_BxHxNxC), 0.0)
  k_to_end = k * to_end_BxHxNxC[..., None]
  state_kept_BxHxN = gamma_BxHxNxC[..., -1] * continues_BxNxC[:, None, :, -1]

  def one_chunk(state_BxHxKxV, per_chunk):
    u_tilde, w, scores, q_from_state, k_to_end, state_kept = per_chunk
    u_BxHxCxV = u_tilde - jnp.einsum('bhck,bhkv->bhcv', w, state_BxHxKxV)
    out = (jnp.einsum('bhck,bhkv->bhcv', q_from_state, state_BxHxKxV)
           + jnp.einsum('bhcj,bhjv->bhcv', scores, u_BxHxCxV))
    state = (state_kept[..., None, None] * state_BxHxKxV
             + jnp.einsum('bhck,bhcv->bhkv', k_to_end, u_BxHxCxV))
    return state, out

  per_chunk = tuple(jnp.moveaxis(x, 2, 0) for x in (
      u_tilde, w, scores_BxHxNxCxC, q_from_state, k_to_end,
      state_kept_BxHxN))
  initial = jnp.zeros(k.shape[:2] + (k.shape[-1], v.shape[-1]), jnp.float32)
  final, outs_NxBxHxCxV = jax.lax.scan(one_chunk, initial, per_chunk)
  outs = jnp.moveaxis(outs_NxBxHxCxV, 0, 2).reshape(
      batch, -1, num_chunks * chunk, v.shape[-1])
  return jnp.moveaxis(outs, 1, 2)[:, :length], final


def bidirectional(query_BxLxHxK, key_BxLxHxK, value_BxLxHxV, beta_BxLxH,
                  log_alpha_BxLxH, segment_ids_BxL, chunk_size: int):
  """Forward plus backward delta rule, each key counted once.

  o_t = M→_tᵀ q_t + M←_{t+1}ᵀ q_t: M→_t the forward state after tokens
  ≤ t of t's segment, M←_{t+1} the state of the same recurrence run from the
  segment's last token back to t + 1 (0 at the segment's last token).

  Returns:
    The outputs, [B, L, H, V].
  """
  forward, _ = chunked(query_BxLxHxK, key_BxLxHxK, value_BxLxHxV, beta_BxLxH,
                       log_alpha_BxLxH, segment_ids_BxL, chunk_size)
  flip = lambda x: jnp.flip(x, axis=1)
  # In reversed order, query r reads the state after reversed token r − 1:
  # the causal output at r − 1 computed with query r.
  next_query = jnp.pad(flip(query_BxLxHxK)[:, 1:],
                       [(0, 0), (0, 1), (0, 0), (0, 0)])
  seg_rev_BxL = flip(segment_ids_BxL)
  shifted, _ = chunked(next_query, flip(key_BxLxHxK), flip(value_BxLxHxV),
                       flip(beta_BxLxH), flip(log_alpha_BxLxH), seg_rev_BxL,
                       chunk_size)
  backward = jnp.pad(shifted[:, :-1], [(0, 0), (1, 0), (0, 0), (0, 0)])
  same_as_previous_BxL = jnp.pad(seg_rev_BxL[:, 1:] == seg_rev_BxL[:, :-1],
                                 [(0, 0), (1, 0)])
  backward = jnp.where(same_as_previous_BxL[..., None, None], backward, 0.0)
  return forward + flip(backward)


def cross(query_BxQxHxK, key_BxKxHxK, value_BxKxHxV, beta_BxKxH,
          log_alpha_BxKxH, q_segment_ids_BxQ, kv_segment_ids_BxK,
          chunk_size: int):
  """Each query reads the final forward state of its segment's keys.

  Keys and queries are merged into one sequence sorted by segment, each
  segment's keys before its queries; query slots write nothing (β = 0,
  log α = 0) and key slots read nothing, so `chunked` gives every query
  M_endᵀ q of its segment.

  Returns:
    The outputs, [B, Q, H, V].
  """
  num_keys = kv_segment_ids_BxK.shape[1]
  segment_ids_BxT = jnp.concatenate([kv_segment_ids_BxK, q_segment_ids_BxQ],
                                    1)
  is_query_T = jnp.arange(segment_ids_BxT.shape[1]) >= num_keys
  # Stable: within a segment, keys (even) come before queries (odd).
  order_BxT = jnp.argsort(2 * segment_ids_BxT + is_query_T[None], axis=1)

  def merged(key_part, query_part):
    both = jnp.concatenate([key_part, query_part], 1)
    index = order_BxT.reshape(order_BxT.shape + (1,) * (both.ndim - 2))
    return jnp.take_along_axis(both, index, axis=1)

  q_zeros = lambda x: jnp.zeros(query_BxQxHxK.shape[:3] + x.shape[3:],
                                x.dtype)
  outputs_BxTxHxV, _ = chunked(
      merged(jnp.zeros_like(key_BxKxHxK), query_BxQxHxK),
      merged(key_BxKxHxK, q_zeros(key_BxKxHxK)),
      merged(value_BxKxHxV, q_zeros(value_BxKxHxV)),
      merged(beta_BxKxH, q_zeros(beta_BxKxH)),
      merged(log_alpha_BxKxH, q_zeros(log_alpha_BxKxH)),
      jnp.take_along_axis(segment_ids_BxT, order_BxT, axis=1), chunk_size)
  slot_BxQ = jnp.argsort(order_BxT, axis=1)[:, num_keys:]
  return jnp.take_along_axis(outputs_BxTxHxV, slot_BxQ[:, :, None, None],
                             axis=1)
