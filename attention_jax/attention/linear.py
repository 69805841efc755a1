"""Linear attention (Katharopoulos et al., 2020) and its kernel machinery.

Softmax attention's exp(q.k) is replaced by a kernel phi(q).phi(k) with
positive features of size M, so that query i attends with

  out_i = phi(q_i)^T sum_j phi(k_j) v_j^T / phi(q_i)^T sum_j phi(k_j)

over the keys j it may see. There is no softmax over scores, so score
biases and attention dropout do not apply. The values are extended by a
column of ones, so one pass computes the numerator and, in the last column,
the normaliser. Here phi(x) = elu(x) + 1; `performer.py` reuses all of this with
random features that estimate the softmax kernel.

How the sums respect padding and packed segments:
  * Padding is segment 0, which no real query belongs to, so real queries
    never see padding keys.
  * Causal (`causal_sums`): segments are contiguous runs, as packing makes
    them. Positions are cut into chunks of `chunk_size`: inside a chunk
    the masked score matrix is formed exactly; across chunks only the sums of
    the segment still open at each chunk's end are carried, and a query uses
    them only if it belongs to that segment, which resets the prefix sums at
    segment starts. Memory is O(L * chunk + L / chunk * M * D) per head
    instead of the O(L * M * D) of a plain cumulative sum; a chunk_size of at
    least L gives the quadratic masked form.
  * Non-causal (`segment_sums`): when queries and keys fit in one chunk,
    the masked kernel matrix is formed directly (the cheapest form for short
    sentences). Otherwise keys and queries are merged into one sequence
    sorted by segment, each segment's keys before its queries, so a query's
    causal prefix is exactly its segment's keys; `causal_sums` then gives
    every segment's sums in linear memory, for any segment layout and for
    queries and keys from different sequences (cross-attention).

Decoding keeps a constant-size state instead of a growing key/value cache
(see `Linear`).
"""

import dataclasses

import jax
import jax.numpy as jnp

from attention_jax.attention import base
from attention_jax.attention import registry


def elu_features(x):
  """phi(x) = elu(x) + 1, positive everywhere."""
  return jax.nn.elu(x) + 1.0


def _masked_sums(phi_q_QxHxM, phi_k_KxHxM, values_KxHxF, visible_QxK):
  """Explicit masked kernel matrix times the values; leading dims shared."""
  scores_HxQxK = jnp.einsum('...qhm,...khm->...hqk', phi_q_QxHxM, phi_k_KxHxM)
  scores_HxQxK = jnp.where(visible_QxK[..., None, :, :], scores_HxQxK, 0.0)
  return jnp.einsum('...hqk,...khf->...qhf', scores_HxQxK, values_KxHxF)


def causal_sums(phi_q_BxLxHxM, phi_k_BxLxHxM, values_BxLxHxF,
                segment_ids_BxL, chunk_size: int):
  """sum over j <= i of the same segment of (phi(q_i).phi(k_j)) v_j.

  Args:
    phi_q_BxLxHxM: query features.
    phi_k_BxLxHxM: key features.
    values_BxLxHxF: values.
    segment_ids_BxL: contiguous runs of equal ids.
    chunk_size: positions per chunk (see module docstring).

  Returns:
    The sums, [B, L, H, F].
  """
  batch, length = segment_ids_BxL.shape
  chunk = min(chunk_size, length)
  pad = -length % chunk
  num_chunks = (length + pad) // chunk

  def split(x):
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return x.reshape(batch, num_chunks, chunk, *x.shape[2:])

  q_BxNxCxHxM, k_BxNxCxHxM = split(phi_q_BxLxHxM), split(phi_k_BxLxHxM)
  v_BxNxCxHxF, seg_BxNxC = split(values_BxLxHxF), split(segment_ids_BxL)

  visible_BxNxCxC = (
      (seg_BxNxC[..., :, None] == seg_BxNxC[..., None, :])
      & jnp.tril(jnp.ones((chunk, chunk), bool))[None, None]
  )
  within_BxNxCxHxF = _masked_sums(
      q_BxNxCxHxM, k_BxNxCxHxM, v_BxNxCxHxF, visible_BxNxCxC
  )
  if num_chunks == 1:
    return within_BxNxCxHxF[:, 0]

  open_seg_BxN = seg_BxNxC[:, :, -1]
  in_open_BxNxC = seg_BxNxC == open_seg_BxN[..., None]
  tail_BxNxHxMxF = jnp.einsum(
      'bnc,bnchm,bnchf->bnhmf', in_open_BxNxC.astype(k_BxNxCxHxM.dtype),
      k_BxNxCxHxM, v_BxNxCxHxF,
  )
  # With contiguous segments, the segment open at the end of chunk n began
  # before chunk n exactly when chunk n - 1 also ended inside it.
  continues_BxN = jnp.pad(
      open_seg_BxN[:, 1:] == open_seg_BxN[:, :-1], [(0, 0), (1, 0)]
  )

  def compose(earlier, later):
    # Each element maps the incoming sums s to keep * s + tail.
    keep_a, sums_a = earlier
    keep_b, sums_b = later
    kept_a = jnp.where(keep_b[..., None, None, None], sums_a, 0.0)
    return keep_a & keep_b, kept_a + sums_b

  _, carried_BxNxHxMxF = jax.lax.associative_scan(
      compose, (continues_BxN, tail_BxNxHxMxF), axis=1
  )
  carried_in_BxNxHxMxF = jnp.pad(
      carried_BxNxHxMxF[:, :-1], [(0, 0), (1, 0), (0, 0), (0, 0), (0, 0)]
  )
  open_before_BxN = jnp.pad(open_seg_BxN[:, :-1], [(0, 0), (1, 0)])
  reads_carry_BxNxC = seg_BxNxC == open_before_BxN[..., None]
  across_BxNxCxHxF = jnp.where(
      reads_carry_BxNxC[..., None, None],
      jnp.einsum('bnqhm,bnhmf->bnqhf', q_BxNxCxHxM, carried_in_BxNxHxMxF),
      0.0,
  )
  sums = (within_BxNxCxHxF + across_BxNxCxHxF).reshape(
      batch, num_chunks * chunk, *values_BxLxHxF.shape[2:]
  )
  return sums[:, :length]


def segment_sums(phi_q_BxQxHxM, phi_k_BxKxHxM, values_BxKxHxF,
                 q_segment_ids_BxQ, kv_segment_ids_BxK, chunk_size: int):
  """sum over keys j of query i's segment of (phi(q_i).phi(k_j)) v_j.

  See the module docstring for the two ways this is computed.

  Returns:
    The sums, [B, Q, H, F].
  """
  num_keys = kv_segment_ids_BxK.shape[1]
  if max(num_keys, q_segment_ids_BxQ.shape[1]) <= chunk_size:
    return _masked_sums(
        phi_q_BxQxHxM, phi_k_BxKxHxM, values_BxKxHxF,
        q_segment_ids_BxQ[:, :, None] == kv_segment_ids_BxK[:, None, :],
    )
  segment_ids_BxT = jnp.concatenate([kv_segment_ids_BxK, q_segment_ids_BxQ], 1)
  is_query_T = jnp.arange(segment_ids_BxT.shape[1]) >= num_keys
  # Stable: within a segment, keys (even) come before queries (odd).
  order_BxT = jnp.argsort(2 * segment_ids_BxT + is_query_T[None], axis=1)

  def merged(key_part, query_part):
    both = jnp.concatenate([key_part, query_part], 1)
    return jnp.take_along_axis(both, order_BxT[:, :, None, None], axis=1)

  query_values = jnp.zeros(
      q_segment_ids_BxQ.shape + values_BxKxHxF.shape[2:], values_BxKxHxF.dtype
  )
  # Key slots carry no query features and query slots no key features.
  sums_BxTxHxF = causal_sums(
      merged(jnp.zeros_like(phi_k_BxKxHxM), phi_q_BxQxHxM),
      merged(phi_k_BxKxHxM, jnp.zeros_like(phi_q_BxQxHxM)),
      merged(values_BxKxHxF, query_values),
      jnp.take_along_axis(segment_ids_BxT, order_BxT, axis=1),
      chunk_size,
  )
  slot_BxQ = jnp.argsort(order_BxT, axis=1)[:, num_keys:]
  return jnp.take_along_axis(sums_BxTxHxF, slot_BxQ[:, :, None, None], axis=1)


def with_ones(values_BxLxHxD):
  """Appends the column of ones whose sums are the normaliser."""
  return jnp.concatenate(
      [values_BxLxHxD, jnp.ones_like(values_BxLxHxD[..., :1])], -1
  )


def normalise(sums_BxQxHxF):
  """Numerator over normaliser (last column) of `with_ones` sums."""
  numerator, normaliser = sums_BxQxHxF[..., :-1], sums_BxQxHxF[..., -1:]
  # A query that sees no key has a zero numerator: its output is 0.
  return numerator / jnp.where(normaliser > 0, normaliser, 1.0)


def kernel_attention(phi_q_BxQxHxM, phi_k_BxKxHxM, values_BxKxHxD,
                     q_segment_ids_BxQ, kv_segment_ids_BxK, *, causal: bool,
                     chunk_size: int):
  """Normalised kernel attention with padding and packed segments.

  Causal attention needs queries and keys from one sequence (equal segment
  ids) with contiguous segments. Outputs at padding queries are meaningless.

  Returns:
    The attended values, [B, Q, H, D].
  """
  values_BxKxHxF = with_ones(values_BxKxHxD)
  if causal:
    sums = causal_sums(phi_q_BxQxHxM, phi_k_BxKxHxM, values_BxKxHxF,
                       kv_segment_ids_BxK, chunk_size)
  else:
    sums = segment_sums(phi_q_BxQxHxM, phi_k_BxKxHxM, values_BxKxHxF,
                        q_segment_ids_BxQ, kv_segment_ids_BxK, chunk_size)
  return normalise(sums)


@dataclasses.dataclass(frozen=True)
class LinearOptions:
  # Positions per chunk of the running sums (see the module docstring); any
  # value computes the same attention.
  chunk_size: int = 512

  def __post_init__(self):
    if self.chunk_size < 1:
      raise ValueError(f'chunk_size={self.chunk_size} must be at least 1.')


@registry.register('linear')
class Linear(base.Mechanism):
  """Linear attention with phi(x) = elu(x) + 1 and a constant-size state.

  Features and sums are float32: long sums in bfloat16 would lose the
  normaliser's precision. With 'rope', the frame rotates queries and keys
  before their features.

  Decoding state (a dict, batch-leading for beam search): 'sums'
  [B, H, M, D + 1], sum_j phi(k_j) [v_j, 1] over the keys so far (last
  column: the normaliser); a subclass whose key features carry a per-key log
  factor also keeps 'key_log_scale' [B, H], the log factor the sums are
  relative to. Cross-attention keeps the same sums over the real memory
  tokens (a decoded row holds one sentence: one segment).
  """

  Options = LinearOptions
  RESUMABLE_FIELDS = ('chunk_size',)
  TEST_OPTIONS = {'chunk_size': 3}
  capabilities = base.Capabilities(
      causal=True,
      decoding_state=base.DecodingState.RECURRENT,
      score_bias=False,
      position_schemes=frozenset({'rope'}),
      attention_weights=False,
      inspectable_weights=False,
  )

  # Whether `key_features` returns a log factor (see there).
  scaled_key_features = False

  def num_features(self, head_dim: int) -> int:
    """M, the size of phi(x) for heads of size `head_dim`."""
    return head_dim

  def query_features(self, module, query_BxLxHxD):
    """phi of the queries, [B, L, H, M]; a positive factor per query cancels."""
    del module
    return elu_features(query_BxLxHxD)

  def key_features(self, module, key_BxLxHxD, segment_ids_BxL):
    """phi of the keys, up to one positive factor per segment (it cancels).

    Returns:
      (features [B, L, H, M], log_factor): the features times
      exp(log_factor[..., None]) are the exact ones; log_factor is [B, L, H],
      equal within a segment, or None when the features are exact.
    """
    del module, segment_ids_BxL
    return elu_features(key_BxLxHxD), None

  def _heads(self, inputs_or_arrays, num_heads):
    """float32 keys and values with their G heads repeated to H."""
    return tuple(
        base.repeat_kv_heads(x.astype(jnp.float32), num_heads)
        for x in inputs_or_arrays
    )

  def attend(self, module, inputs):
    query = inputs.query_BxQxHxD.astype(jnp.float32)
    key, value = self._heads((inputs.key_BxKxGxD, inputs.value_BxKxGxD),
                             query.shape[2])
    mask = inputs.mask
    phi_k, _ = self.key_features(module, key, mask.kv_segment_ids_BxK)
    return kernel_attention(
        self.query_features(module, query), phi_k, value,
        mask.q_segment_ids_BxQ, mask.kv_segment_ids_BxK, causal=mask.causal,
        chunk_size=self.options.chunk_size,
    )

  def reference(self, params, inputs, path=()):
    # out_i = sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j), over
    # the keys j that query i may see (Katharopoulos et al., eq. 4-5).
    del params
    num_heads = inputs.query_BxQxHxD.shape[2]
    phi_q, phi_k = self.reference_features(
        inputs.query_BxQxHxD.astype(jnp.float32),
        base.repeat_kv_heads(inputs.key_BxKxGxD, num_heads).astype(
            jnp.float32), path)
    value = base.repeat_kv_heads(inputs.value_BxKxGxD, num_heads).astype(
        jnp.float32)
    similarity = jnp.sum(phi_q[:, :, None] * phi_k[:, None], -1)  # BxQxKxH
    similarity = jnp.where(
        jnp.moveaxis(base.reference_mask(inputs), 1, -1), similarity, 0.0)
    numerator = jnp.einsum('bqkh,bkhd->bqhd', similarity, value)
    normaliser = similarity.sum(2)[..., None]
    return numerator / jnp.where(normaliser > 0, normaliser, 1.0)

  def reference_features(self, query, key, path):
    """(phi(q), phi(k)) exactly, as the paper defines them."""
    del path
    return jax.nn.elu(query) + 1, jax.nn.elu(key) + 1

  def initial_state(self, module, key_BxKxGxD, value_BxKxGxD, num_heads):
    del module
    batch, _, _, depth = value_BxKxGxD.shape
    state = {'sums': jnp.zeros(
        (batch, num_heads, self.num_features(key_BxKxGxD.shape[-1]),
         depth + 1), jnp.float32)}
    if self.scaled_key_features:
      state['key_log_scale'] = jnp.full((batch, num_heads),
                                        jnp.finfo(jnp.float32).min)
    return state

  def step(self, module, state, query_Bx1xHxD, key_Bx1xGxD, value_Bx1xGxD,
           key_extras):
    """Adds this step's key to the running sums, then attends with them."""
    del key_extras
    query = query_Bx1xHxD.astype(jnp.float32)
    key, value = self._heads((key_Bx1xGxD, value_Bx1xGxD), query.shape[2])
    # A decoded row is one sentence; a single step's key is its own segment.
    phi_k, log_factor_Bx1xH = self.key_features(
        module, key, jnp.ones(key.shape[:2], jnp.int32))
    step_BxHxMxF = jnp.einsum('bhm,bhf->bhmf', phi_k[:, 0],
                              with_ones(value)[:, 0])
    state = dict(state)
    if log_factor_Bx1xH is None:
      state['sums'] = state['sums'] + step_BxHxMxF
    else:
      # Both terms are re-expressed relative to the larger log factor, so
      # the sums keep their ratio and never overflow.
      old_scale = state['key_log_scale']
      new_scale_BxH = jnp.maximum(old_scale, log_factor_Bx1xH[:, 0])
      old_weight = jnp.exp(old_scale - new_scale_BxH)
      step_weight = jnp.exp(log_factor_Bx1xH[:, 0] - new_scale_BxH)
      state['sums'] = (state['sums'] * old_weight[..., None, None]
                       + step_BxHxMxF * step_weight[..., None, None])
      state['key_log_scale'] = new_scale_BxH
    return self.read(module, state, query), state

  def summarise(self, module, key_BxKxGxD, value_BxKxGxD, kv_segment_ids_BxK,
                num_heads, key_extras):
    del key_extras
    key, value = self._heads((key_BxKxGxD, value_BxKxGxD), num_heads)
    real_BxK = kv_segment_ids_BxK != 0
    phi_k, _ = self.key_features(module, key, real_BxK.astype(jnp.int32))
    phi_k = jnp.where(real_BxK[:, :, None, None], phi_k, 0.0)
    return {'sums': jnp.einsum('bkhm,bkhf->bhmf', phi_k, with_ones(value))}

  def read(self, module, summary, query_BxQxHxD):
    phi_q = self.query_features(module, query_BxQxHxD.astype(jnp.float32))
    return normalise(jnp.einsum('bqhm,bhmf->bqhf', phi_q, summary['sums']))
