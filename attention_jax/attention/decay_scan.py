"""Linear attention with a decaying state, shared by `retnet`, `gla` and
`mamba2`.

Each head keeps a d_k x d_v state and reads it with its query:

  S_t = Diag(a_t) S_{t-1} + k_t^T v_t,    o_t = q_t S_t,

where a_t in (0, 1] is token t's decay: one value per head (RetNet's fixed
gamma, Mamba-2's exp(-Delta_t A)) or one per key channel (GLA). Mechanisms
supply only their log-decays (`key_extras['log_decay']`, float32, [B, K, H]
or [B, K, H, d_k]) and how they scale queries and keys; this module
computes every place from them. Unrolled, key j reaches query i with the
weight w_ij (per key channel) and o_i = sum_j (q_i * w_ij) . k_j v_j:

  * causal self-attention: w_ij = prod_{l=j+1}^{i} a_l for j <= i.
  * bidirectional self-attention: the sum of a forward scan (the causal
    recurrence) and a backward scan, the same recurrence run on the reversed
    sentence, S'_t = Diag(a_t) S'_{t+1} + k_t^T v_t. The token itself is
    counted once, by the forward scan: o_t = q_t S_t + q_t Diag(a_t)
    S'_{t+1}. So w_ij = prod_{l=i}^{j-1} a_l for j > i: each token's own
    gate decays what reaches it from either side (for RetNet gamma^|i-j|,
    the symmetric decay of Fan et al. 2024, "RMT").
  * cross-attention: every query reads the final states of both scans over
    its memory sentence, S_last + S'_first, as a bidirectional RNN encoder
    hands over both final states: w_j = prod_{l=j+1}^{last} a_l +
    prod_{l=first}^{j-1} a_l. Decoding keeps this one d_k x d_v state.

Packed segments are contiguous runs; each starts with S = 0, and padding
(segment 0) never enters a state. No normalisation over keys. The papers'
short convolution on q, k and v, output norm and output gate are options of
every mechanism here (`conv_norm_gate`, off by default): the convolution
before the projected heads enter any of the forms above (self-attention
only), the norm and gate on o in `finish`.

The fast causal form (`causal_scan`) cuts the sequence into chunks: inside a
chunk the masked decayed score matrix is formed exactly, its decays the exp
of differences of in-chunk cumulative log-decays (never positive, so never
overflowing); across chunks the states of the segment open at each chunk's
end are carried by a `lax.scan`. Per-channel decays score a chunk with one
matmul of rescaled queries and keys while no chunk spans more than
FACTORED_RANGE nats of decay, and with the two-level form of the GLA paper
otherwise (see `_decayed_scores`). Memory is O(L * chunk) per head, and
O(L * (SUBCHUNK + chunk / SUBCHUNK) * d_k) in the two-level form. The
mechanism class that uses these forms is `decaying_state.DecayingState`.
`reference_recurrence` (a plain scan over tokens) and `reference_dense`
(explicit decay products) are written from the definitions above, sharing
nothing with it.
"""

import jax
import jax.numpy as jnp



def as_channels(log_decay):
  """[B, L, H] (one decay per head) -> [B, L, H, 1]; [B, L, H, d_k] stays."""
  return log_decay[..., None] if log_decay.ndim == 3 else log_decay


def _chunked(x, num_chunks: int, chunk: int, mode: str = 'constant'):
  """[B, L, ...] -> [B, N, C, ...], padded at the end."""
  pad = num_chunks * chunk - x.shape[1]
  x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), mode=mode)
  return x.reshape(x.shape[0], num_chunks, chunk, *x.shape[2:])


def _head_major_chunks(x_BxLxHxD, num_chunks: int, chunk: int):
  """[B, L, H, D] -> [B, H, N, C, D], zero-padded at the end.

  Heads and chunks lead, so every matmul of `causal_scan` batches over its
  leading axes and XLA moves no data between them.
  """
  return jnp.moveaxis(_chunked(x_BxLxHxD, num_chunks, chunk), 3, 1)


# Per-channel decays: the largest decay, in nats, one chunk may span in any
# channel for the one-matmul scores (`_factored_scores`); beyond it, the
# two-level form (`_two_level_scores`). At 60 nats every factor lies within
# e^(+-30), far from float32's limits (e^(+-87)).
FACTORED_RANGE = 60.0
# Per-channel decays: sub-chunk length of the two-level form.
SUBCHUNK = 4


def _chunk_cumsum(log_decay_BxHxNxCxA):
  """Cumulative log-decays inside each chunk, as one matmul with a lower
  triangle of ones (XLA:CPU lowers `cumsum` to a reduce-window)."""
  chunk = log_decay_BxHxNxCxA.shape[3]
  lower_CxC = jnp.tril(jnp.ones((chunk, chunk), log_decay_BxHxNxCxA.dtype))
  return jnp.einsum('ij,bhnja->bhnia', lower_CxC, log_decay_BxHxNxCxA,
                    precision=jax.lax.Precision.HIGHEST)


def _pair_decays(cum_BxHxNxCxA, visible_CxC):
  """exp(cum_i - cum_j) where visible, else 0: [B, H, N, C, C, A]."""
  gap = cum_BxHxNxCxA[..., :, None, :] - cum_BxHxNxCxA[..., None, :, :]
  # Masked before exp: invisible pairs (j > i) have positive gaps that would
  # overflow and turn gradients into NaN.
  return jnp.exp(jnp.where(visible_CxC[:, :, None], gap, -jnp.inf))


def _factored_scores(q_BxHxNxCxK, k_BxHxNxCxK, cum_BxHxNxCxK):
  """sum_d q_id k_jd exp(cum_id - cum_jd) for all pairs of a chunk, as one
  matmul of q_i exp(cum_i - r) and k_j exp(r - cum_j), r half the chunk's
  total log-decay per channel (Yang et al. 2024, sec. 4.1, stabilised by
  the midpoint). Exact while no chunk spans more than FACTORED_RANGE nats;
  pairs j > i come out finite and are masked by the caller.

  Returns:
    [B, H, N, C, C] (query i, key j).
  """
  mid_BxHxNx1xK = cum_BxHxNxCxK[:, :, :, -1:] / 2
  return jnp.einsum('bhnik,bhnjk->bhnij',
                    q_BxHxNxCxK * jnp.exp(cum_BxHxNxCxK - mid_BxHxNx1xK),
                    k_BxHxNxCxK * jnp.exp(mid_BxHxNx1xK - cum_BxHxNxCxK))


def _two_level_scores(q_BxHxNxCxK, k_BxHxNxCxK, cum_BxHxNxCxK):
  """The scores of `_factored_scores` for any decays (j <= i only, 0 above).

  The two-level form of Yang et al. 2024 (sec. 4.2, "secondary chunking"):
  the chunk is cut into sub-chunks of SUBCHUNK positions; a key j before
  the query's sub-chunk, which starts at p with cum_p, is scored by a
  matmul of q_i exp(cum_i - cum_p) and k_j exp(cum_p - cum_j), both factors
  at most 1 (cum never increases), so nothing overflows and a factor
  underflows only where the exact product is smaller still; pairs in one
  sub-chunk take the exact elementwise form.
  """
  chunk = q_BxHxNxCxK.shape[3]
  causal_CxC = jnp.tril(jnp.ones((chunk, chunk), bool))
  if chunk <= SUBCHUNK or chunk % SUBCHUNK:
    return jnp.einsum('bhnik,bhnjk,bhnijk->bhnij', q_BxHxNxCxK, k_BxHxNxCxK,
                      _pair_decays(cum_BxHxNxCxK, causal_CxC))
  lead, num_sub = q_BxHxNxCxK.shape[:3], chunk // SUBCHUNK
  split = lambda x: x.reshape(lead + (num_sub, SUBCHUNK) + x.shape[4:])
  q_BxHxNxMxSxK, cum_BxHxNxMxSxK = split(q_BxHxNxCxK), split(cum_BxHxNxCxK)
  start_BxHxNxMxK = cum_BxHxNxMxSxK[:, :, :, :, 0]
  q_scaled = q_BxHxNxMxSxK * jnp.exp(cum_BxHxNxMxSxK
                                     - start_BxHxNxMxK[:, :, :, :, None])
  # Key j lies before sub-chunk m: [M, C].
  before_MxC = (jnp.arange(chunk)[None]
                < SUBCHUNK * jnp.arange(num_sub)[:, None])
  gap_BxHxNxMxCxK = (start_BxHxNxMxK[:, :, :, :, None]
                     - cum_BxHxNxCxK[:, :, :, None])
  k_scaled = k_BxHxNxCxK[:, :, :, None] * jnp.exp(
      jnp.where(before_MxC[:, :, None], gap_BxHxNxMxCxK, -jnp.inf))
  earlier_BxHxNxMxSxC = jnp.einsum('bhnmik,bhnmjk->bhnmij', q_scaled,
                                   k_scaled)
  causal_SxS = jnp.tril(jnp.ones((SUBCHUNK, SUBCHUNK), bool))
  # An einsum, not a broadcast product summed over k: XLA:CPU (jax 0.10.2)
  # corrupts memory running the latter's gradient at some shapes.
  within_BxHxNxMxSxS = jnp.einsum(
      'bhnmik,bhnmjk,bhnmijk->bhnmij', q_BxHxNxMxSxK, split(k_BxHxNxCxK),
      _pair_decays(cum_BxHxNxMxSxK, causal_SxS))
  # Sub-chunk m's own keys occupy columns m*S .. m*S + S - 1.
  within_BxHxNxMxSxC = jnp.einsum(
      'bhnmij,mp->bhnmipj', within_BxHxNxMxSxS,
      jnp.eye(num_sub, dtype=within_BxHxNxMxSxS.dtype)).reshape(
          earlier_BxHxNxMxSxC.shape)
  return (earlier_BxHxNxMxSxC + within_BxHxNxMxSxC).reshape(
      lead + (chunk, chunk))


# Chunks the two-level form scores at once: its intermediates are
# O(chunk * (SUBCHUNK + chunk / SUBCHUNK) * d_k) per chunk and head, so it
# runs over the chunks in groups (`lax.map`), which keeps the memory a
# compiled program reserves for this rarely taken branch independent of the
# sequence length.
TWO_LEVEL_CHUNKS_AT_ONCE = 16


def _two_level_scores_by_chunks(q_BxHxNxCxK, k_BxHxNxCxK, cum_BxHxNxCxK):
  """`_two_level_scores`, TWO_LEVEL_CHUNKS_AT_ONCE chunks at a time."""
  by_chunk = lambda x: jnp.moveaxis(x, 2, 0)[:, :, :, None]
  # Checkpointed, so the gradient keeps no group's intermediates either.
  scores_NxBxHx1xCxC = jax.lax.map(
      jax.checkpoint(lambda chunk_n: _two_level_scores(*chunk_n)),
      tuple(by_chunk(x) for x in (q_BxHxNxCxK, k_BxHxNxCxK, cum_BxHxNxCxK)),
      batch_size=min(TWO_LEVEL_CHUNKS_AT_ONCE, q_BxHxNxCxK.shape[2]))
  return jnp.moveaxis(scores_NxBxHx1xCxC[:, :, :, 0], 0, 2)


def _decayed_scores(q_BxHxNxCxK, k_BxHxNxCxK, cum_BxHxNxCxA,
                    visible_BxNxCxC):
  """sum_d q_id k_jd exp(cum_id - cum_jd) where visible, per chunk.

  One decay per head: the C x C decays times q k^T. Per key channel (GLA):
  `_factored_scores` when every chunk of the batch spans at most
  FACTORED_RANGE nats in every channel, else `_two_level_scores`; both
  recompute in the backward pass, so the branch keeps no intermediates.

  Returns:
    [B, H, N, C, C] (query i, key j).
  """
  visible_Bx1xNxCxC = visible_BxNxCxC[:, None]
  if cum_BxHxNxCxA.shape[-1] == 1:
    chunk = q_BxHxNxCxK.shape[3]
    decays_BxHxNxCxC = _pair_decays(
        cum_BxHxNxCxA, jnp.tril(jnp.ones((chunk, chunk), bool)))[..., 0]
    scores = jnp.einsum('bhnik,bhnjk->bhnij', q_BxHxNxCxK,
                        k_BxHxNxCxK) * decays_BxHxNxCxC
  else:
    in_range = jnp.all(cum_BxHxNxCxA[:, :, :, -1] >= -FACTORED_RANGE)
    scores = jax.lax.cond(in_range, jax.checkpoint(_factored_scores),
                          jax.checkpoint(_two_level_scores_by_chunks),
                          q_BxHxNxCxK, k_BxHxNxCxK, cum_BxHxNxCxA)
  return jnp.where(visible_Bx1xNxCxC, scores, 0.0)


def causal_scan(q_BxLxHxK, k_BxLxHxK, v_BxLxHxV, log_decay_BxLxHxA,
                segment_ids_BxL, chunk_size: int, *,
                include_current: bool = True):
  """The causal recurrence in chunks (see the module docstring).

  Args:
    q_BxLxHxK: float32 queries.
    k_BxLxHxK: float32 keys.
    v_BxLxHxV: float32 values.
    log_decay_BxLxHxA: float32 log a_t, A = 1 (per head) or d_k.
    segment_ids_BxL: contiguous runs of equal ids; 0 is padding.
    chunk_size: positions per chunk; any value computes the same function.
    include_current: whether query i reads key i (False: only j < i).

  Returns:
    (outputs [B, L, H, V], the state [B, H, K, V] of the segment open at the
    end of the sequence).
  """
  batch, length = segment_ids_BxL.shape
  chunk = min(chunk_size, length)
  num_chunks = -(-length // chunk)
  k_BxLxHxK = jnp.where(segment_ids_BxL[..., None, None] > 0, k_BxLxHxK, 0.0)
  q, k, v, log_decay = (_head_major_chunks(x, num_chunks, chunk) for x in (
      q_BxLxHxK, k_BxLxHxK, v_BxLxHxV, log_decay_BxLxHxA))
  # Positions past the end continue the last segment with no key and no
  # decay, so the last chunk's open segment and state are the sequence's.
  seg_BxNxC = _chunked(segment_ids_BxL, num_chunks, chunk, mode='edge')
  cum_BxHxNxCxA = _chunk_cumsum(log_decay)

  causal_CxC = jnp.tril(jnp.ones((chunk, chunk), bool),
                        0 if include_current else -1)
  visible_BxNxCxC = ((seg_BxNxC[..., :, None] == seg_BxNxC[..., None, :])
                     & causal_CxC[None, None])
  within_BxHxNxCxV = jnp.einsum(
      'bhnij,bhnjv->bhniv',
      _decayed_scores(q, k, cum_BxHxNxCxA, visible_BxNxCxC), v)

  open_seg_BxN = seg_BxNxC[:, :, -1]
  in_open_Bx1xNxCx1 = (seg_BxNxC == open_seg_BxN[..., None])[:, None, ...,
                                                             None]
  to_end_BxHxNxCxA = jnp.exp(cum_BxHxNxCxA[:, :, :, -1:] - cum_BxHxNxCxA)
  tail_BxHxNxKxV = jnp.einsum(
      'bhnck,bhncv->bhnkv',
      jnp.where(in_open_Bx1xNxCx1, k * to_end_BxHxNxCxA, 0.0), v)
  # With contiguous segments, chunk n lies wholly inside the segment open
  # at the end of chunk n - 1 exactly when that segment is still open at
  # the end of chunk n.
  continues_BxN = jnp.pad(open_seg_BxN[:, 1:] == open_seg_BxN[:, :-1],
                          [(0, 0), (1, 0)])
  chunk_decay_BxHxNxA = jnp.exp(cum_BxHxNxCxA[:, :, :, -1])

  def carry(state_BxHxKxV, chunk_n):
    continues_B, decay_BxHxA, tail_BxHxKxV = chunk_n
    kept = decay_BxHxA[..., None] * state_BxHxKxV
    state_BxHxKxV = jnp.where(continues_B[:, None, None, None], kept,
                              0.0) + tail_BxHxKxV
    return state_BxHxKxV, state_BxHxKxV

  final_BxHxKxV, states_NxBxHxKxV = jax.lax.scan(
      carry, jnp.zeros_like(tail_BxHxNxKxV[:, :, 0]),
      (jnp.moveaxis(continues_BxN, 1, 0),
       jnp.moveaxis(chunk_decay_BxHxNxA, 2, 0),
       jnp.moveaxis(tail_BxHxNxKxV, 2, 0)))
  incoming_BxHxNxKxV = jnp.moveaxis(
      jnp.concatenate([jnp.zeros_like(states_NxBxHxKxV[:1]),
                       states_NxBxHxKxV[:-1]]), 0, 2)
  open_before_BxN = jnp.pad(open_seg_BxN[:, :-1], [(0, 0), (1, 0)])
  reads_Bx1xNxCx1 = (seg_BxNxC == open_before_BxN[..., None])[:, None, ...,
                                                              None]
  across_BxHxNxCxV = jnp.where(
      reads_Bx1xNxCx1,
      jnp.einsum('bhnck,bhnkv->bhncv', q * jnp.exp(cum_BxHxNxCxA),
                 incoming_BxHxNxKxV), 0.0)
  out_BxHxNxCxV = within_BxHxNxCxV + across_BxHxNxCxV
  out = jnp.moveaxis(out_BxHxNxCxV, 1, 3).reshape(
      batch, num_chunks * chunk, *v_BxLxHxV.shape[2:])
  return out[:, :length], final_BxHxKxV


def bidirectional_scan(q_BxLxHxK, k_BxLxHxK, v_BxLxHxV, log_decay_BxLxHxA,
                       segment_ids_BxL, chunk_size: int):
  """Forward plus backward scan, the token counted once; [B, L, H, V]."""
  forward, _ = causal_scan(q_BxLxHxK, k_BxLxHxK, v_BxLxHxV,
                           log_decay_BxLxHxA, segment_ids_BxL, chunk_size)
  backward, _ = causal_scan(
      *(jnp.flip(x, 1) for x in (q_BxLxHxK, k_BxLxHxK, v_BxLxHxV,
                                 log_decay_BxLxHxA, segment_ids_BxL)),
      chunk_size, include_current=False)
  return forward + jnp.flip(backward, 1)


def _segment_exclusive_cumsum(x_BxLxHxA, segment_ids_BxL):
  """sum of x over the earlier tokens of each token's segment.

  A scan that restarts at segment starts: partial sums only grow, so no
  sum is the difference of two long prefix sums.
  """
  same_BxL = jnp.pad(segment_ids_BxL[:, 1:] == segment_ids_BxL[:, :-1],
                     [(0, 0), (1, 0)])
  starts_BxLxHxA = jnp.broadcast_to(~same_BxL[..., None, None],
                                    x_BxLxHxA.shape)

  def combine(earlier, later):
    sum_a, start_a = earlier
    sum_b, start_b = later
    return jnp.where(start_b, sum_b, sum_a + sum_b), start_a | start_b

  inclusive, _ = jax.lax.associative_scan(
      combine, (x_BxLxHxA, starts_BxLxHxA), axis=1)
  shifted = jnp.pad(inclusive[:, :-1], [(0, 0), (1, 0), (0, 0), (0, 0)])
  return jnp.where(same_BxL[..., None, None], shifted, 0.0)


def memory_key_weights(log_decay_BxKxHxA, segment_ids_BxK):
  """Each memory key's weight in S_last + S'_first of its segment.

  Returns:
    prod_{l>j} a_l + prod_{l<j} a_l over key j's segment, [B, K, H, A].
  """
  before = _segment_exclusive_cumsum(log_decay_BxKxHxA, segment_ids_BxK)
  after = jnp.flip(_segment_exclusive_cumsum(
      jnp.flip(log_decay_BxKxHxA, 1), jnp.flip(segment_ids_BxK, 1)), 1)
  return jnp.exp(after) + jnp.exp(before)


def reference_recurrence(q_BxLxHxK, k_BxLxHxK, v_BxLxHxV, log_decay_BxLxHxA,
                         segment_ids_BxL):
  """S_t = Diag(a_t) S_{t-1} + k_t^T v_t token by token; S = 0 at a segment
  start, padding adds nothing.

  Returns:
    (o_t = q_t S_t [B, L, H, V], the last S [B, H, K, V]).
  """
  new_BxL = jnp.pad(segment_ids_BxL[:, 1:] != segment_ids_BxL[:, :-1],
                    [(0, 0), (1, 0)], constant_values=True)

  def step(state_BxHxKxV, token):
    q_t, k_t, v_t, log_a_t, segment_t, new_t = token
    state_BxHxKxV = jnp.where(new_t[:, None, None, None], 0.0, state_BxHxKxV)
    added = jnp.einsum('bhk,bhv->bhkv', k_t, v_t)
    state_BxHxKxV = (jnp.exp(log_a_t)[..., None] * state_BxHxKxV
                     + jnp.where(segment_t[:, None, None, None] > 0, added,
                                 0.0))
    return state_BxHxKxV, jnp.einsum('bhk,bhkv->bhv', q_t, state_BxHxKxV)

  batch, _, heads, depth_k = k_BxLxHxK.shape
  state = jnp.zeros((batch, heads, depth_k, v_BxLxHxV.shape[-1]))
  final, out_LxBxHxV = jax.lax.scan(
      step, state, tuple(jnp.moveaxis(x, 1, 0) for x in (
          q_BxLxHxK, k_BxLxHxK, v_BxLxHxV, log_decay_BxLxHxA,
          segment_ids_BxL, new_BxL)))
  return jnp.moveaxis(out_LxBxHxV, 0, 1), final


def reference_dense(q_BxQxHxK, k_BxKxHxK, v_BxKxHxV, log_decay_BxKxHxA,
                    visible_BxQxK, kv_segment_ids_BxK, *, self_attention):
  """o_i = sum_j (q_i * w_ij) . k_j v_j with the non-causal w of the module
  docstring, from explicit sums of log a over each key's span.

  Args:
    visible_BxQxK: which keys each query may see (segments, padding).
    self_attention: bidirectional self-attention (queries are the keys'
      tokens); otherwise cross-attention.
  """
  num_q, num_k = q_BxQxHxK.shape[1], k_BxKxHxK.shape[1]
  l = jnp.arange(num_k)[None, None, :]
  if self_attention:
    i, j = jnp.arange(num_q)[:, None, None], jnp.arange(num_k)[None, :, None]
    span_QxKxL = jnp.where(j <= i, (j < l) & (l <= i), (i <= l) & (l < j))
    weight_BxQxKxHxA = jnp.exp(jnp.einsum(
        'qkl,blha->bqkha', span_QxKxL.astype(jnp.float32), log_decay_BxKxHxA))
  else:
    seg = kv_segment_ids_BxK
    same_BxKxL = seg[:, :, None] == seg[:, None, :]
    j = jnp.arange(num_k)[None, :, None]
    after, before = same_BxKxL & (l > j), same_BxKxL & (l < j)
    weight_BxKxHxA = sum(
        jnp.exp(jnp.einsum('bkl,blha->bkha', span.astype(jnp.float32),
                           log_decay_BxKxHxA)) for span in (after, before))
    weight_BxQxKxHxA = weight_BxKxHxA[:, None]
  scores_BxQxKxH = jnp.sum(
      q_BxQxHxK[:, :, None] * k_BxKxHxK[:, None] * weight_BxQxKxHxA, -1)
  scores_BxQxKxH = jnp.where(visible_BxQxK[..., None], scores_BxQxKxH, 0.0)
  return jnp.einsum('bqkh,bkhv->bqhv', scores_BxQxKxH, v_BxKxHxV)
