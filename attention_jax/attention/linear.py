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
    them. Positions are cut into chunks of `cfg.chunk_size`: inside a chunk
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
(see `LinearAttention`).
"""

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax.attention import positions
from attention_jax.attention import projections
from attention_jax.attention import registry
from attention_jax.attention.dot_product import repeat_kv_heads
from attention_jax.model.config import TransformerConfig


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
      & jnp.tril(jnp.ones((chunk, chunk), bool))
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
  order_BxT = jnp.argsort(2 * segment_ids_BxT + is_query_T, axis=1)

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


def _default_positions(batch: int, length: int):
  return jnp.broadcast_to(jnp.arange(length), (batch, length))


@registry.register('linear')
class LinearAttention(nn.Module):
  """Multi-head linear attention with a constant-size decoding state.

  Projections are dot_product's: 'query' to (num_heads, head_dim), 'key' and
  'value' to (num_kv_heads, head_dim) (repeated to num_heads heads), 'out'
  back to the query width. With `position_scheme='rope'`, self-attention
  rotates queries and keys before their features.

  Features and sums are float32: long sums in bfloat16 would lose the
  normaliser's precision.

  Decoding state in the 'cache' collection, batch-leading for beam search:
    self-attention: 'state' [B, H, M, D + 1], sum_j phi(k_j) [v_j, 1] over the
      keys so far (last column: the normaliser); with rope also the scalar
      'cache_index'; a subclass whose key features carry a per-key log factor
      also keeps 'key_log_scale' [B, H], the log factor the sums are
      relative to.
    cross-attention: 'memory_state' [B, H, M, D + 1], the same sums over the
      real memory tokens, computed on the creating call. Decoded rows hold one
      sentence each, so all real memory tokens form one segment.
  """

  # Capabilities checked when a config is built (see masks.py).
  can_be_causal: ClassVar[bool] = True
  forms_scores: ClassVar[bool] = False

  cfg: TransformerConfig
  causal: bool = False

  def query_features(self, query_BxLxHxD):
    """phi of the queries, [B, L, H, M]; a positive factor per query cancels."""
    return elu_features(query_BxLxHxD)

  def key_features(self, key_BxLxHxD, segment_ids_BxL):
    """phi of the keys, up to one positive factor per segment (it cancels).

    Returns:
      (features [B, L, H, M], log_factor): the features times
      exp(log_factor[..., None]) are the exact ones; log_factor is [B, L, H],
      equal within a segment, or None when the features are exact.
    """
    del segment_ids_BxL
    return elu_features(key_BxLxHxD), None

  @nn.compact
  def __call__(self, inputs_q, inputs_kv, q_segment_ids, kv_segment_ids,
               q_positions=None, kv_positions=None):
    cfg = self.cfg
    positions.check_scheme(cfg.position_scheme)
    query = self._project('query', cfg.num_heads, inputs_q)
    if cfg.decode and not self.causal:
      sums = jnp.einsum(
          'bqhm,bhmf->bqhf', self.query_features(query),
          self._memory_state(inputs_kv, kv_segment_ids),
      )
      out_BxQxHxD = normalise(sums)
    else:
      key, value = self._keys_values(inputs_kv)
      is_self_attention = self.causal or inputs_kv is inputs_q
      if cfg.position_scheme == 'rope' and is_self_attention:
        query, key = self._rotate(query, key, q_positions, kv_positions)
      if cfg.decode:
        out_BxQxHxD = self._decode_step(query, key, value)
      else:
        phi_k, _ = self.key_features(key, kv_segment_ids)
        out_BxQxHxD = kernel_attention(
            self.query_features(query), phi_k, value, q_segment_ids,
            kv_segment_ids, causal=self.causal, chunk_size=cfg.chunk_size,
        )
    return projections.from_heads(
        cfg, out_BxQxHxD.astype(cfg.dtype), inputs_q.shape[-1]
    )

  def _project(self, name, num_heads, inputs_BxLxE):
    heads = projections.to_heads(self.cfg, name, num_heads, inputs_BxLxE)
    return heads.astype(jnp.float32)

  def _keys_values(self, inputs_kv):
    """Keys and values with num_kv_heads heads, repeated to num_heads."""
    kv_heads = self.cfg.num_kv_heads or self.cfg.num_heads
    return tuple(
        repeat_kv_heads(self._project(name, kv_heads, inputs_kv),
                        self.cfg.num_heads)
        for name in ('key', 'value')
    )

  def _rotate(self, query, key, q_positions, kv_positions):
    """Rotary embeddings; in decoding a step's position is its cache index."""
    batch, length = query.shape[:2]
    if self.cfg.decode:
      creating = not self.has_variable('cache', 'cache_index')
      # A scalar: beam search reorders rows but all rows are at one step.
      index = self.variable(
          'cache', 'cache_index', lambda: jnp.array(0, jnp.int32)
      )
      if creating:
        q_positions = _default_positions(batch, length)
      else:
        q_positions = jnp.full((batch, length), index.value)
        index.value += length
      kv_positions = q_positions
    else:
      if q_positions is None:
        q_positions = _default_positions(batch, length)
      if kv_positions is None:
        kv_positions = _default_positions(batch, key.shape[1])
    return (positions.rotate(query, q_positions),
            positions.rotate(key, kv_positions))

  def _memory_state(self, inputs_kv, kv_segment_ids):
    """Sums over the encoder memory, computed once on the creating call."""
    if self.has_variable('cache', 'memory_state'):
      return self.get_variable('cache', 'memory_state')
    key, value = self._keys_values(inputs_kv)
    real_BxK = kv_segment_ids != 0
    phi_k, _ = self.key_features(key, real_BxK.astype(jnp.int32))
    phi_k = jnp.where(real_BxK[:, :, None, None], phi_k, 0.0)
    state = jnp.einsum('bkhm,bkhf->bhmf', phi_k, with_ones(value))
    self.put_variable('cache', 'memory_state', state)
    return state

  def _decode_step(self, query, key, value):
    """Adds this step's key to the running sums, then attends with them."""
    is_initialized = self.has_variable('cache', 'state')
    batch, length, heads, _ = key.shape
    phi_q = self.query_features(query)
    # A decoded row is one sentence; a single step's key is its own segment.
    one_segment_BxL = jnp.ones((batch, length), jnp.int32)
    phi_k, log_factor_BxLxH = self.key_features(key, one_segment_BxL)
    state = self.variable(
        'cache', 'state', jnp.zeros,
        (batch, heads, phi_k.shape[-1], value.shape[-1] + 1), jnp.float32,
    )
    if log_factor_BxLxH is not None:
      key_log_scale = self.variable(
          'cache', 'key_log_scale', jnp.full, (batch, heads),
          jnp.finfo(jnp.float32).min,
      )
    if not is_initialized:
      # The creating call sees the full decode length; its output is unused.
      return kernel_attention(
          phi_q, phi_k, value, one_segment_BxL, one_segment_BxL, causal=True,
          chunk_size=self.cfg.chunk_size,
      )
    if length != 1:
      raise ValueError(
          f'Incremental decoding consumes one token per call, got {length}.'
      )
    step_BxHxMxF = jnp.einsum(
        'bhm,bhf->bhmf', phi_k[:, 0], with_ones(value)[:, 0]
    )
    if log_factor_BxLxH is None:
      state.value = state.value + step_BxHxMxF
    else:
      # Both terms are re-expressed relative to the larger log factor, so
      # the sums keep their ratio and never overflow.
      new_scale_BxH = jnp.maximum(key_log_scale.value, log_factor_BxLxH[:, 0])
      old_weight = jnp.exp(key_log_scale.value - new_scale_BxH)
      step_weight = jnp.exp(log_factor_BxLxH[:, 0] - new_scale_BxH)
      state.value = (state.value * old_weight[..., None, None]
                     + step_BxHxMxF * step_weight[..., None, None])
      key_log_scale.value = new_scale_BxH
    return normalise(jnp.einsum('bqhm,bhmf->bqhf', phi_q, state.value))
