"""Masks shared by every attention mechanism, and the contract they follow.

Every registered attention module is built and called the same way:

  module = AttentionCls(cfg=transformer_config, causal=..., name=...)
  out_BxQxE = module(inputs_q_BxQxE, inputs_kv_BxKxE,
                     q_segment_ids_BxQ, kv_segment_ids_BxK,
                     q_positions_BxQ, kv_positions_BxK)

Segment ids are integers; 0 marks padding and equal non-zero ids mark tokens of
the same packed sentence, so padding and packing are handled by one mechanism.
Positions count from 0 within each packed sentence (position schemes that act
inside attention, such as rotary embeddings or score biases, use them).
`cfg.decode=True` switches a module to incremental decoding: it keeps whatever
state it needs in the Flax `cache` collection (keys and values for softmax
attention; another mechanism may keep a different state). The first call with
an empty cache only creates that state from the shapes (self-attention) or
from the memory (cross-attention); later calls each consume one query step,
whose position is given in `q_positions`.

Each class also declares, as class attributes, what it can do, so that a
config asking for the impossible is refused before anything is compiled:
  can_be_causal: usable as decoder self-attention (with incremental decoding).
  forms_scores: computes a query-by-key score matrix, so score biases
    (relative positions, ALiBi) can apply.
"""

import jax.numpy as jnp


def segment_mask(q_segment_ids_BxQ, kv_segment_ids_BxK):
  """True where query and key belong to the same non-padding segment.

  Returns:
    Boolean mask of shape [B, 1, Q, K] (broadcast over heads).
  """
  same_BxQxK = q_segment_ids_BxQ[:, :, None] == kv_segment_ids_BxK[:, None, :]
  real_Bx1xK = (kv_segment_ids_BxK != 0)[:, None, :]
  return (same_BxQxK & real_Bx1xK)[:, None]


def causal_mask(q_len: int, kv_len: int):
  """True where key position <= query position, shape [1, 1, Q, K]."""
  q_pos = jnp.arange(q_len)[:, None] + (kv_len - q_len)
  return (jnp.arange(kv_len)[None, :] <= q_pos)[None, None]


def key_padding_mask(kv_segment_ids_BxK):
  """True for real (non-padding) keys, shape [B, 1, 1, K]."""
  return (kv_segment_ids_BxK != 0)[:, None, None, :]
