"""Sliding-window (local) self-attention.

Each query sees only the keys within `window_size` positions of itself:
|i - j| < window in the encoder, 0 <= i - j < window in the decoder (the
window of Longformer, Beltagy et al., 2020, and Mistral). Positions are the
ones the frame passes, counted within each packed segment, so the window
never reaches into another sentence. Cross-attention compares two different
sequences, where a window has no meaning, and stays full softmax attention.

Training visits only the key chunks that overlap the band, so time and
memory grow as length x window. Decoding keeps the latest `window_size`
keys in a ring of that many cache slots (`decoding_cache_slots`), so a
decoding step's attention, and beam search's reordering of the cache, cost
O(window) however long the output grows (chapters of a thousand pieces and
more).
"""

import dataclasses
import functools

from attention_jax.attention import chunked
from attention_jax.attention import registry
from attention_jax.attention import softmax


@dataclasses.dataclass(frozen=True)
class LocalOptions:
  # Keys closer than this many positions to the query are visible.
  window_size: int = 64
  # Longest block of the blockwise computation (blocks are at most as long
  # as the window); any value computes the same attention.
  chunk_size: int = 512

  def __post_init__(self):
    if self.window_size < 1:
      raise ValueError(f'window_size={self.window_size} must be at least 1.')
    if self.chunk_size < 1:
      raise ValueError(f'chunk_size={self.chunk_size} must be at least 1.')


def window_mask(q_positions_BxQ, kv_positions_BxK, window: int, causal: bool):
  """True where the key is inside the query's window, [B, 1, Q, K]."""
  offset_BxQxK = q_positions_BxQ[:, :, None] - kv_positions_BxK[:, None, :]
  if causal:
    inside = (offset_BxQxK >= 0) & (offset_BxQxK < window)
  else:
    inside = abs(offset_BxQxK) < window
  return inside[:, None]


@registry.register('local')
class Local(softmax.Softmax):
  """Softmax self-attention restricted to a window of `window_size`."""

  Options = LocalOptions
  RESUMABLE_FIELDS = ('chunk_size',)
  TEST_OPTIONS = {'window_size': 3, 'chunk_size': 2}
  # Computed by chunked's block loop, whose normaliser has no sink term.
  capabilities = dataclasses.replace(softmax.FAMILY_CAPABILITIES, sink=False)

  def _restrict(self, inputs):
    if not inputs.self_attention:
      return inputs.mask
    return inputs.mask.restrict(functools.partial(
        window_mask, window=self.options.window_size, causal=inputs.causal))

  def attend(self, module, inputs):
    if inputs.capture_weights is not None:
      # As chunked's: inspection takes softmax's dense path over the window.
      return super().attend(
          module, dataclasses.replace(inputs, mask=self._restrict(inputs)))
    window = self.options.window_size
    index_band = None
    if inputs.self_attention and not inputs.decoding:
      # In training self-attention queries and keys are one sequence whose
      # positions advance by one per token within a segment, so a window of
      # positions is also a band of indices.
      index_band = (window - 1, 0 if inputs.causal else window - 1)
    return chunked.attend_in_blocks(
        module, inputs, min(self.options.chunk_size, window),
        self._restrict(inputs), index_band,
    )

  def decoding_cache_slots(self, max_decode_len):
    return min(self.options.window_size, max_decode_len)

  def reference_weights(self, params, inputs, path=()):
    return super().reference_weights(
        params, dataclasses.replace(inputs, mask=self._restrict(inputs)), path)
