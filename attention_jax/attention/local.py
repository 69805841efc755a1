"""Sliding-window (local) self-attention.

Each query sees only the keys within `cfg.window_size` positions of itself:
|i - j| < window in the encoder, 0 <= i - j < window in the decoder (the
window of Longformer, Beltagy et al., 2020, and Mistral). Positions are the
ones the base passes, counted within each packed segment, so the window
never reaches into another sentence. Cross-attention compares two different
sequences, where a window has no meaning, and stays full softmax attention.

Training visits only the key chunks that overlap the band, so time and
memory grow as length x window. Decoding keeps the baseline's full key/value
cache (beam search and the cache layout stay the same as for `dot_product`)
and masks it to the window; a ring buffer of `window` slots would save cache
memory for decodes much longer than the window, which translation's
sentence-length decodes are not.
"""

from attention_jax.attention import registry
from attention_jax.attention.chunked import ChunkedAttention
from attention_jax.attention.chunked import TokenMask


def window_mask(q_positions_BxQ, kv_positions_BxK, window: int, causal: bool):
  """True where the key is inside the query's window, [B, 1, Q, K]."""
  offset_BxQxK = q_positions_BxQ[:, :, None] - kv_positions_BxK[:, None, :]
  if causal:
    inside = (offset_BxQxK >= 0) & (offset_BxQxK < window)
  else:
    inside = abs(offset_BxQxK) < window
  return inside[:, None]


@registry.register('local')
class LocalAttention(ChunkedAttention):
  """Softmax self-attention restricted to a window of `cfg.window_size`."""

  def _extra_mask(self, q_positions_BxQ, kv_positions_BxK):
    return window_mask(
        q_positions_BxQ, kv_positions_BxK, self.cfg.window_size, self.causal
    )

  def _block_size(self) -> int:
    # Blocks about as long as the window waste little work on masked keys.
    return min(self.cfg.chunk_size, self.cfg.window_size)

  def _index_band(self, mask):
    # In training self-attention the queries and keys are one sequence whose
    # positions advance by one per token within a segment, so a window of
    # positions is also a band of indices. Decoding and cross-attention get
    # a full array mask and visit all key chunks.
    if not isinstance(mask, TokenMask):
      return None
    reach = self.cfg.window_size - 1
    return (reach, 0 if self.causal else reach)
