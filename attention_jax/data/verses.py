"""Several verses in one text: joined by a separator piece, split back.

A chapter-level corpus (bible_chapters.py) stores a chapter as its verses
joined by `SEPARATOR`, which its sentencepiece vocabulary keeps as one piece
(a user-defined symbol, tokenizer.py). The separator is followed by a space
and not preceded by one: sentencepiece then encodes the joined text as the
verses' own encodings joined by the separator's id (a space before it would
add a lone '▁' piece, none after it would glue the next word to it), and
decodes those ids back to the same form, so a translation splits into verses
where the model emitted separators.
"""

from typing import Sequence

SEPARATOR = '<v>'


def join(verses: Sequence[str], separator: str = SEPARATOR) -> str:
  """The verses as one text: 'First verse.<v> Second verse.'."""
  return (separator + ' ').join(verses)


def split(text: str, separator: str = SEPARATOR) -> list[str]:
  """The verses of a joined text, stripped; one more than its separators.

  Splits at every occurrence, so a translation with too few or too many
  separators gives too few or too many verses, never an error.
  """
  return [verse.strip() for verse in text.split(separator)]
