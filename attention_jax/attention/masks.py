"""Who may attend to whom, kept per token and formed block by block.

A `TokenMask` never stores a Q x K array: mechanisms that want the whole
mask call `dense()`, blockwise ones call `block()` for the blocks they
visit, and linear-time ones read the segment ids directly.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

# (q_positions, kv_positions) -> boolean array broadcastable to [B, 1, Q, K].
PositionRule = Callable[[jax.Array, jax.Array], jax.Array]


def segment_mask(q_segment_ids_BxQ, kv_segment_ids_BxK):
  """True where query and key belong to the same non-padding segment.

  Returns:
    Boolean mask of shape [B, 1, Q, K] (broadcast over heads).
  """
  same_BxQxK = q_segment_ids_BxQ[:, :, None] == kv_segment_ids_BxK[:, None, :]
  real_Bx1xK = (kv_segment_ids_BxK != 0)[:, None, :]
  return (same_BxQxK & real_Bx1xK)[:, None]


def causal_mask(q_len: int, kv_len: int):
  """True where key position <= query position, shape [1, 1, Q, K].

  Queries are the last `q_len` of the `kv_len` keys' sequence.
  """
  q_pos = jnp.arange(q_len)[:, None] + (kv_len - q_len)
  return (jnp.arange(kv_len)[None, :] <= q_pos)[None, None]


@dataclasses.dataclass(frozen=True)
class TokenMask:
  """An attention mask kept as per-token vectors, never as Q x K.

  Query i may see key j when both belong to the same non-padding segment;
  when `causal`, only if j <= i + K - Q (queries are the last Q of the keys'
  sequence); and when every rule in `rules` allows it for their positions.
  Rules must be broadcasting comparisons of positions only, so that applying
  them to a block's positions gives that block's mask.

  Attributes:
    q_segment_ids_BxQ: int32 segment id of each query (0: padding).
    kv_segment_ids_BxK: int32 segment id of each key (0: padding).
    q_positions_BxQ: int32 position of each query in its sentence.
    kv_positions_BxK: int32 position of each key in its sentence.
    causal: whether keys after the query are hidden (by index).
    rules: further position rules (a local window, say).
  """

  q_segment_ids_BxQ: jax.Array
  kv_segment_ids_BxK: jax.Array
  q_positions_BxQ: jax.Array
  kv_positions_BxK: jax.Array
  causal: bool = False
  rules: tuple[PositionRule, ...] = ()

  def restrict(self, rule: PositionRule) -> 'TokenMask':
    """This mask with one more position rule."""
    return dataclasses.replace(self, rules=self.rules + (rule,))

  def dense(self):
    """The whole boolean mask, [B, 1, Q, K]."""
    allowed = segment_mask(self.q_segment_ids_BxQ, self.kv_segment_ids_BxK)
    if self.causal:
      allowed &= causal_mask(self.q_segment_ids_BxQ.shape[1],
                             self.kv_segment_ids_BxK.shape[1])
    for rule in self.rules:
      allowed &= rule(self.q_positions_BxQ, self.kv_positions_BxK)
    return allowed

  def block(self, q_index_C, k_index_C):
    """Boolean mask of one block of query and key indices, [B, 1, Cq, Ck].

    Indices count from 0 and may run past the ends (clipped; the caller
    masks such slots itself).
    """
    q_seg_BxC = _take_tokens(self.q_segment_ids_BxQ, q_index_C)
    kv_seg_BxC = _take_tokens(self.kv_segment_ids_BxK, k_index_C)
    allowed_BxQxK = (q_seg_BxC[:, :, None] == kv_seg_BxC[:, None, :]) & (
        kv_seg_BxC != 0
    )[:, None, :]
    allowed = allowed_BxQxK[:, None]
    if self.causal:
      q_len = self.q_segment_ids_BxQ.shape[1]
      kv_len = self.kv_segment_ids_BxK.shape[1]
      allowed &= (k_index_C[None, :] <= q_index_C[:, None] + kv_len - q_len)[
          None, None]
    for rule in self.rules:
      allowed &= rule(_take_tokens(self.q_positions_BxQ, q_index_C),
                      _take_tokens(self.kv_positions_BxK, k_index_C))
    return allowed


def _take_tokens(x_BxL, index_C):
  return jnp.take(x_BxL, index_C, axis=1, mode='clip')
