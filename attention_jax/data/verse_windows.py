"""Windows of whole verses that fit in max_len pieces.

Chapters run from a few hundred to several thousand pieces, more than a row
of `data.max_len` holds. A chapter is therefore cut, greedily and in order,
into windows of consecutive whole verses: a window takes the next verse
while its joined encoding (verses, one separator between two verses, EOS)
still fits in max_len on every side. A chapter that fits is one window.
Training and validation loss see windows of both sides; a test chapter is
translated window by window of its source (only the source is known), and
the windows' translations are joined back with the separator.
"""

from typing import Sequence

import sentencepiece as spm

from attention_jax.data import verses


def windows(lengths: Sequence[Sequence[int]], max_len: int) -> list[range]:
  """Cuts a chapter's verses into runs that fit in max_len on every side.

  Args:
    lengths: per side (source, target, or the source alone), the pieces of
      each verse, without separator or EOS; every side lists its verses in
      the same order and number.
    max_len: the most pieces a window may hold on each side, counting one
      separator between two verses and the EOS.

  Returns:
    Ranges of verse indices: consecutive, in order, covering every verse
    exactly once. A verse too long by itself is a window of its own, longer
    than max_len (training drops it, translation cuts it).

  Raises:
    ValueError: the sides list different numbers of verses.
  """
  counts = {len(side) for side in lengths}
  if len(counts) != 1:
    raise ValueError(f'Sides with different numbers of verses: {counts}.')
  result = []
  start, used = 0, [0] * len(lengths)
  for index in range(counts.pop()):
    # Each verse brings its pieces and one more: the separator before the
    # next verse or, for the last one, the EOS.
    needed = [u + side[index] + 1 for u, side in zip(used, lengths)]
    if index > start and max(needed) > max_len:
      result.append(range(start, index))
      start = index
      needed = [side[index] + 1 for side in lengths]
    used = needed
  if lengths and lengths[0]:
    result.append(range(start, len(lengths[0])))
  return result


def window_pairs(
    sp: spm.SentencePieceProcessor,
    pairs: Sequence[tuple[str, str]],
    max_len: int,
    separator: str,
) -> list[tuple[str, str]]:
  """Every (source, target) chapter cut into window pairs, in order.

  Raises:
    ValueError: a pair whose sides hold different numbers of verses.
  """
  result = []
  for pair in pairs:
    sides = [verses.split(text, separator) for text in pair]
    lengths = [[len(ids) for ids in sp.encode(side)] for side in sides]
    for window in windows(lengths, max_len):
      result.append(tuple(verses.join(side[window.start:window.stop],
                                      separator) for side in sides))
  return result


def source_windows(
    sp: spm.SentencePieceProcessor, source: str, max_len: int, separator: str
) -> list[str]:
  """A chapter's source cut into windows of whole verses, in order."""
  source_verses = verses.split(source, separator)
  lengths = [len(ids) for ids in sp.encode(source_verses)]
  return [verses.join(source_verses[w.start:w.stop], separator)
          for w in windows([lengths], max_len)]
