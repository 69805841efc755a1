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

so U = (I + A)⁻¹ (diag(β) V − diag(β γ) K M_0), one small triangular
inverse per chunk, and o_t = γ_t M_0ᵀ q_t + Σ_{j≤t} (γ_t/γ_j)(q_t·k_j) u_j.
`chunked` runs a scan over chunks whose step does all of one chunk's work
(see its docstring for why not the layout that forms every chunk's factors
at once). The ratios γ_t/γ_j are exp of differences of in-chunk cumulative
log α, formed only where t ≥ j (so they never exceed 1). Segment boundaries
inside a chunk mask A and the output matrix to same-segment pairs, and M_0
reaches only the tokens that continue the segment open when the chunk began.
"""

import jax
import jax.numpy as jnp


def recurrent_step(state_BxHxKxV, query_BxHxK, key_BxHxK, value_BxHxV,
                   beta_BxH, log_alpha_BxH):
  """One token of the recurrence: (o_t [B, H, V], M_t [B, H, K, V]).

  log_alpha_BxH may be None: no decay (α = 1).
  """
  decayed = (state_BxHxKxV if log_alpha_BxH is None else
             jnp.exp(log_alpha_BxH)[..., None, None] * state_BxHxKxV)
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
    beta_BxLxH, log_alpha_BxLxH: per-token write strength and log decay;
      log_alpha_BxLxH may be None (no decay).
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

  inputs = tuple(None if x is None else jnp.moveaxis(x, 1, 0) for x in (
      query_BxLxHxK, key_BxLxHxK, value_BxLxHxV, beta_BxLxH,
      log_alpha_BxLxH, starts_BxL))
  state = jnp.zeros((batch, heads, depth, value_BxLxHxV.shape[-1]),
                    jnp.float32)
  _, (outputs, states) = jax.lax.scan(token, state, inputs, reverse=reverse)
  return jnp.moveaxis(outputs, 0, 1), jnp.moveaxis(states, 0, 1)


@jax.custom_vjp
def unit_lower_inverse(a_BxCxC):
  """(I + A)⁻¹ for strictly lower triangular A [.., C, C], by blocks.

  Doubles the block size from 1: with the inverses X₁, X₂ of two adjacent
  diagonal blocks and A₂₁ the block between them, the inverse of the block
  they form is [[X₁, 0], [−X₂ A₂₁ X₁, X₂]]. ⌈log₂ C⌉ rounds of batched
  matmuls (the blocked triangular inversion of LAPACK's trtri, and the block
  merging of the UT transform in Yang et al. 2024).
  `jax.scipy.linalg.solve_triangular` is not used: on
  XLA:CPU (jax 0.10.2) its forward pass over [1, 8, 64, 32, 32] is fast, but
  its gradient with a 128-column right-hand side did not finish in minutes.

  A `jax.custom_vjp`: with T = (I + A)⁻¹, dT = −T dA T, so the gradient is
  Ā = −Tᵀ T̄ Tᵀ on the strictly lower triangle (two batched matmuls instead
  of the transposed rounds).
  """
  return _doubling_inverse(a_BxCxC)


def _unit_lower_inverse_fwd(a_BxCxC):
  inverse = _doubling_inverse(a_BxCxC)
  return inverse, inverse


def _unit_lower_inverse_bwd(inverse_BxCxC, inverse_bar_BxCxC):
  chunk = inverse_BxCxC.shape[-1]
  a_bar = -jnp.einsum('...ji,...jk,...lk->...il', inverse_BxCxC,
                      inverse_bar_BxCxC, inverse_BxCxC)
  return (jnp.where(jnp.tril(jnp.ones((chunk, chunk), bool), -1), a_bar,
                    0.0),)


unit_lower_inverse.defvjp(_unit_lower_inverse_fwd, _unit_lower_inverse_bwd)


def _doubling_inverse(a_BxCxC):
  """The doubling rounds of `unit_lower_inverse`."""
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


def _decay(log_gamma_BxC, where_BxCxC):
  """γ_t / γ_j at (t, j) where `where_BxCxC` (only t ≥ j), else 0."""
  log_ratio = log_gamma_BxC[..., :, None] - log_gamma_BxC[..., None, :]
  # Zeroed before exp: the excluded t < j would overflow (and NaN grads).
  return jnp.where(where_BxCxC, jnp.exp(jnp.where(where_BxCxC, log_ratio,
                                                  0.0)), 0.0)


def chunked(query_BxLxHxK, key_BxLxHxK, value_BxLxHxV, beta_BxLxH,
            log_alpha_BxLxH, segment_ids_BxL, chunk_size: int):
  """The causal recurrence, chunk by chunk (see the module docstring).

  One `lax.scan` step per chunk does all of the chunk's work: the in-chunk
  products, the triangular inverse, the pseudo-values and the state. Each
  step's arrays are a few [H, C, C] and [C, H, D] blocks that stay in cache.
  On XLA:CPU this beat the layout that forms every chunk's factors at once
  and scans only the state (the batched [N·H] matmuls of that layout ran at
  about a tenth of the matmul peak and streamed every [N, C, C] array
  through memory): DeltaNet at 2k tokens 0.19 -> 0.13 s forward+backward.
  The step is rematerialised in the backward pass (`jax.checkpoint`): at 2k
  tokens 1-6% slower than saving its residuals, for 40% less of XLA's
  temporary memory (36 against 60 MiB; 578 against 956 MiB at 32k), the
  states entering each chunk being most of what is kept (README, "gated
  linear and delta-rule forms").

  Args: as `recurrent` (forwards, reading after the write), except that
    log_alpha_BxLxH may be None: no decay (DeltaNet), which skips every
    decay term rather than computing exp(0). chunk_size: tokens per chunk
    (any value computes the same function; 32 is the fastest here).

  Returns:
    (outputs [B, L, H, V], the state after the last token [B, H, K, V]: that
    of the segment open at the end of each row).
  """
  batch, length = segment_ids_BxL.shape
  chunk = min(chunk_size, length)
  pad = -length % chunk
  num_chunks = (length + pad) // chunk

  def split(x, mode='constant'):
    # [B, L, ...] -> [N, B, C, ...]; the tail continues the last segment with
    # β = 0 and log α = 0, which leaves the state unchanged.
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), mode=mode)
    return jnp.moveaxis(x.reshape(batch, num_chunks, chunk, *x.shape[2:]),
                        1, 0)

  seg_NxBxC = split(segment_ids_BxL, mode='edge')
  # A segment reaching back before chunk n is the one open at chunk n − 1's
  # end (segments are contiguous); nothing is open before the first chunk.
  open_before_NxB = jnp.concatenate(
      [jnp.full_like(seg_NxBxC[:1, :, -1], -1), seg_NxBxC[:-1, :, -1]], 0)
  continues_NxBxCx1 = (seg_NxBxC == open_before_NxB[..., None])[..., None]
  # Tokens whose write reaches the chunk's final state.
  in_last_NxBxCx1 = (seg_NxBxC == seg_NxBxC[..., -1:])[..., None]
  q, k, v = (split(x) for x in (query_BxLxHxK, key_BxLxHxK, value_BxLxHxV))
  beta_NxBxCxH = split(beta_BxLxH)
  if log_alpha_BxLxH is None:
    log_gamma_NxBxCxH = None
    gamma_NxBxCxH = continues_NxBxCx1.astype(jnp.float32)
    to_end_NxBxCxH = in_last_NxBxCx1.astype(jnp.float32)
  else:
    log_gamma_NxBxCxH = jnp.cumsum(split(log_alpha_BxLxH), axis=2)
    gamma_NxBxCxH = jnp.where(continues_NxBxCx1, jnp.exp(log_gamma_NxBxCxH),
                              0.0)
    to_end_NxBxCxH = jnp.where(
        in_last_NxBxCx1,
        jnp.exp(log_gamma_NxBxCxH[:, :, -1:] - log_gamma_NxBxCxH), 0.0)
  # Per-token factors (β, γ) multiply one chunk's blocks inside the loop, so
  # their gradients are small reductions. Applied to whole [N, B, C, H, D]
  # arrays before the loop, the reduction of their gradients went to an
  # XLA:CPU YNNPACK fusion that took 15 of DeltaNet's 80 ms at 2k tokens.
  per_chunk = dict(
      q=q, k=k, v=v, seg=seg_NxBxC, beta=beta_NxBxCxH, gamma=gamma_NxBxCxH,
      to_end=to_end_NxBxCxH,
      kept=jnp.broadcast_to(gamma_NxBxCxH[:, :, -1], beta_NxBxCxH.shape[:2]
                            + beta_NxBxCxH.shape[3:]),
      log_gamma=log_gamma_NxBxCxH)

  @jax.checkpoint
  def one_chunk(state_BxHxKxV, x):
    same_Bx1xCxC = (x['seg'][:, :, None] == x['seg'][:, None, :])[:, None]
    earlier = same_Bx1xCxC & jnp.tril(jnp.ones((1, 1, chunk, chunk), bool),
                                      -1)
    upto = same_Bx1xCxC & jnp.tril(jnp.ones((1, 1, chunk, chunk), bool))
    kk_BxHxCxC = jnp.einsum('bthk,bjhk->bhtj', x['k'], x['k'])
    qk_BxHxCxC = jnp.einsum('bthk,bjhk->bhtj', x['q'], x['k'])
    beta_BxHxCx1 = jnp.moveaxis(x['beta'], -1, -2)[..., None]
    if x['log_gamma'] is None:
      a_BxHxCxC = jnp.where(earlier, beta_BxHxCx1 * kk_BxHxCxC, 0.0)
      scores_BxHxCxC = jnp.where(upto, qk_BxHxCxC, 0.0)
    else:
      # One exp for both: `earlier` is `upto` without the diagonal.
      decay_BxHxCxC = _decay(jnp.moveaxis(x['log_gamma'], -1, -2), upto)
      a_BxHxCxC = jnp.where(earlier, beta_BxHxCx1 * kk_BxHxCxC
                            * decay_BxHxCxC, 0.0)
      scores_BxHxCxC = qk_BxHxCxC * decay_BxHxCxC
    # U = (I + A)⁻¹ diag(β) (V − diag(γ) K M_0).
    gamma_BxCxHx1 = x['gamma'][..., None]
    rhs_BxCxHxV = x['beta'][..., None] * (
        x['v'] - jnp.einsum('bchk,bhkv->bchv', gamma_BxCxHx1 * x['k'],
                            state_BxHxKxV))
    u_BxCxHxV = jnp.einsum('bhtj,bjhv->bthv', unit_lower_inverse(a_BxHxCxC),
                           rhs_BxCxHxV)
    out_BxCxHxV = (jnp.einsum('bchk,bhkv->bchv', gamma_BxCxHx1 * x['q'],
                              state_BxHxKxV)
                   + jnp.einsum('bhcj,bjhv->bchv', scores_BxHxCxC, u_BxCxHxV))
    state = (x['kept'][..., None, None] * state_BxHxKxV
             + jnp.einsum('bchk,bchv->bhkv', x['to_end'][..., None] * x['k'],
                          u_BxCxHxV))
    return state, out_BxCxHxV

  initial = jnp.zeros((batch, k.shape[3], k.shape[4], v.shape[4]),
                      jnp.float32)
  final, outs_NxBxCxHxV = jax.lax.scan(one_chunk, initial, per_chunk)
  outs = jnp.moveaxis(outs_NxBxCxHxV, 0, 1).reshape(
      batch, num_chunks * chunk, *outs_NxBxCxHxV.shape[3:])
  return outs[:, :length], final


def bidirectional(query_BxLxHxK, key_BxLxHxK, value_BxLxHxV, beta_BxLxH,
                  log_alpha_BxLxH, segment_ids_BxL, chunk_size: int):
  """Forward plus backward delta rule, each key counted once.

  o_t = M→_tᵀ q_t + M←_{t+1}ᵀ q_t: M→_t the forward state after tokens
  ≤ t of t's segment, M←_{t+1} the state of the same recurrence run from the
  segment's last token back to t + 1 (0 at the segment's last token).

  Args: as `chunked` (log_alpha_BxLxH None: no decay).

  Returns:
    The outputs, [B, L, H, V].
  """
  forward, _ = chunked(query_BxLxHxK, key_BxLxHxK, value_BxLxHxV, beta_BxLxH,
                       log_alpha_BxLxH, segment_ids_BxL, chunk_size)
  flip = lambda x: None if x is None else jnp.flip(x, axis=1)
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
  M_endᵀ q of its segment. log_alpha_BxKxH may be None (no decay).

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
      (None if log_alpha_BxKxH is None
       else merged(log_alpha_BxKxH, q_zeros(log_alpha_BxKxH))),
      jnp.take_along_axis(segment_ids_BxT, order_BxT, axis=1), chunk_size)
  slot_BxQ = jnp.argsort(order_BxT, axis=1)[:, num_keys:]
  return jnp.take_along_axis(outputs_BxTxHxV, slot_BxQ[:, :, None, None],
                             axis=1)
