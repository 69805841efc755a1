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
end are carried by a `lax.scan`. Memory is O(L * chunk) per head for scalar
decays and O(L * (SUBCHUNK + chunk / SUBCHUNK) * d_k) for per-channel ones
(see `_decayed_scores`). The mechanism class that uses these forms is
`decaying_state.DecayingState`. `reference_recurrence`
(a plain scan over tokens) and `reference_dense` (explicit decay products)
are written from the definitions above, sharing nothing with it.
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


# Per-channel decays: sub-chunk length of the two-level form (see
# `_decayed_scores`).
SUBCHUNK = 4


def _decayed_scores(q_BxNxCxHxK, k_BxNxCxHxK, cum_BxNxCxHxA, visible_BxNxCxC):
  """sum_d q_id k_jd exp(cum_id - cum_jd) where visible, per chunk.

  One decay per head: the C x C decays times q k^T. Per key channel
  (GLA), the two-level form of Yang et al. 2024 (sec. 4.2, "secondary
  chunking"): the chunk is cut into sub-chunks of SUBCHUNK positions; a
  key j before the query's sub-chunk, which starts at p with cum_p, is
  scored by a matmul of q_i exp(cum_i - cum_p) and k_j exp(cum_p - cum_j),
  both factors at most 1 (cum never increases), so nothing overflows and a
  factor underflows only where the exact product is smaller still; pairs in
  one sub-chunk take the exact elementwise form, O(SUBCHUNK * d_k) per
  position instead of O(C * d_k).

  Returns:
    [B, N, H, C, C] (query i, key j).
  """
  chunk, channels = q_BxNxCxHxK.shape[2], cum_BxNxCxHxA.shape[-1]
  if channels == 1:
    return (jnp.einsum('bnihk,bnjhk->bnhij', q_BxNxCxHxK, k_BxNxCxHxK)
            * jnp.moveaxis(_pair_decays(cum_BxNxCxHxA, visible_BxNxCxC)[
                ..., 0], -1, 2))
  if chunk <= SUBCHUNK or chunk % SUBCHUNK:
    return jnp.einsum('bnihk,bnjhk,bnijhk->bnhij', q_BxNxCxHxK, k_BxNxCxHxK,
                      _pair_decays(cum_BxNxCxHxA, visible_BxNxCxC))
  lead, num_sub = q_BxNxCxHxK.shape[:2], chunk // SUBCHUNK
  split = lambda x: x.reshape(lead + (num_sub, SUBCHUNK) + x.shape[3:])
  q_BxNxMxSxHxK, cum_BxNxMxSxHxA = split(q_BxNxCxHxK), split(cum_BxNxCxHxA)
  start_BxNxMxHxA = cum_BxNxMxSxHxA[:, :, :, 0]
  q_scaled = q_BxNxMxSxHxK * jnp.exp(cum_BxNxMxSxHxA
                                     - start_BxNxMxHxA[:, :, :, None])
  position_C = jnp.arange(chunk)
  # Key j lies before sub-chunk m: [M, C].
  before_MxC = position_C[None] < SUBCHUNK * jnp.arange(num_sub)[:, None]
  gap_BxNxMxCxHxA = (start_BxNxMxHxA[:, :, :, None]
                     - cum_BxNxCxHxA[:, :, None])
  k_scaled = k_BxNxCxHxK[:, :, None] * jnp.exp(
      jnp.where(before_MxC[None, None, :, :, None, None], gap_BxNxMxCxHxA,
                -jnp.inf))
  earlier_BxNxHxMxSxC = jnp.einsum('bnmihk,bnmjhk->bnhmij', q_scaled,
                                   k_scaled)
  sub_visible = visible_BxNxCxC.reshape(
      lead + (num_sub, SUBCHUNK, num_sub, SUBCHUNK))
  diagonal_visible = jnp.moveaxis(  # [B, N, M, S, S]
      jnp.diagonal(sub_visible, axis1=2, axis2=4), -1, 2)
  # Pairs inside one sub-chunk, the sub-chunks flattened into the chunks.
  flat = lambda x: x.reshape((lead[0], -1) + x.shape[3:])
  decays_BxNxMxSxSxHxA = _pair_decays(
      flat(cum_BxNxMxSxHxA), flat(diagonal_visible)).reshape(
          lead + (num_sub, SUBCHUNK, SUBCHUNK) + cum_BxNxCxHxA.shape[3:])
  within_BxNxHxMxSxS = jnp.einsum(
      'bnmihk,bnmjhk,bnmijhk->bnhmij', q_BxNxMxSxHxK, split(k_BxNxCxHxK),
      decays_BxNxMxSxSxHxA)
  # Sub-chunk m's own keys occupy columns m*S .. m*S + S - 1.
  within_BxNxHxMxSxC = jnp.einsum(
      'bnhmij,mq->bnhmiqj', within_BxNxHxMxSxS,
      jnp.eye(num_sub, dtype=within_BxNxHxMxSxS.dtype)).reshape(
          earlier_BxNxHxMxSxC.shape)
  scores = (earlier_BxNxHxMxSxC + within_BxNxHxMxSxC).reshape(
      lead + (q_BxNxCxHxK.shape[3], chunk, chunk))
  return jnp.where(visible_BxNxCxC[:, :, None], scores, 0.0)


def _pair_decays(cum_BxNxCxHxA, visible_BxNxCxC):
  """exp(cum_i - cum_j) where visible, else 0: [B, N, C, C, H, A]."""
  gap = cum_BxNxCxHxA[:, :, :, None] - cum_BxNxCxHxA[:, :, None, :]
  # Masked before exp: invisible pairs (j > i) have positive gaps that would
  # overflow and turn gradients into NaN.
  return jnp.exp(jnp.where(visible_BxNxCxC[..., None, None], gap, -jnp.inf))


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
  q, k, v, log_decay = (_chunked(x, num_chunks, chunk) for x in (
      q_BxLxHxK, k_BxLxHxK, v_BxLxHxV, log_decay_BxLxHxA))
  # Positions past the end continue the last segment with no key and no
  # decay, so the last chunk's open segment and state are the sequence's.
  seg_BxNxC = _chunked(segment_ids_BxL, num_chunks, chunk, mode='edge')
  cum_BxNxCxHxA = jnp.cumsum(log_decay, axis=2)

  causal_CxC = jnp.tril(jnp.ones((chunk, chunk), bool),
                        0 if include_current else -1)
  visible_BxNxCxC = ((seg_BxNxC[..., :, None] == seg_BxNxC[..., None, :])
                     & causal_CxC[None, None])
  within_BxNxCxHxV = jnp.einsum(
      'bnhij,bnjhv->bnihv',
      _decayed_scores(q, k, cum_BxNxCxHxA, visible_BxNxCxC), v)

  open_seg_BxN = seg_BxNxC[:, :, -1]
  in_open_BxNxC = seg_BxNxC == open_seg_BxN[..., None]
  to_end_BxNxCxHxA = jnp.exp(cum_BxNxCxHxA[:, :, -1:] - cum_BxNxCxHxA)
  tail_BxNxHxKxV = jnp.einsum(
      'bnchk,bnchv->bnhkv',
      jnp.where(in_open_BxNxC[..., None, None], k * to_end_BxNxCxHxA, 0.0), v)
  # With contiguous segments, chunk n lies wholly inside the segment open
  # at the end of chunk n - 1 exactly when that segment is still open at
  # the end of chunk n.
  continues_BxN = jnp.pad(open_seg_BxN[:, 1:] == open_seg_BxN[:, :-1],
                          [(0, 0), (1, 0)])
  chunk_decay_BxNxHxA = jnp.exp(cum_BxNxCxHxA[:, :, -1])

  def carry(state_BxHxKxV, chunk_n):
    continues_B, decay_BxHxA, tail_BxHxKxV = chunk_n
    kept = decay_BxHxA[..., None] * state_BxHxKxV
    state_BxHxKxV = jnp.where(continues_B[:, None, None, None], kept,
                              0.0) + tail_BxHxKxV
    return state_BxHxKxV, state_BxHxKxV

  final_BxHxKxV, states_NxBxHxKxV = jax.lax.scan(
      carry, jnp.zeros_like(tail_BxNxHxKxV[:, 0]),
      tuple(jnp.moveaxis(x, 1, 0) for x in (
          continues_BxN, chunk_decay_BxNxHxA, tail_BxNxHxKxV)))
  incoming_BxNxHxKxV = jnp.moveaxis(
      jnp.concatenate([jnp.zeros_like(states_NxBxHxKxV[:1]),
                       states_NxBxHxKxV[:-1]]), 0, 1)
  open_before_BxN = jnp.pad(open_seg_BxN[:, :-1], [(0, 0), (1, 0)])
  reads_BxNxC = seg_BxNxC == open_before_BxN[..., None]
  across_BxNxCxHxV = jnp.where(
      reads_BxNxC[..., None, None],
      jnp.einsum('bnchk,bnhkv->bnchv', q * jnp.exp(cum_BxNxCxHxA),
                 incoming_BxNxHxKxV), 0.0)
  out = (within_BxNxCxHxV + across_BxNxCxHxV).reshape(
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
