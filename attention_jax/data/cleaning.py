"""Skipping corrupt or hostile sentence pairs, counted by reason.

Cleaning only filters: a kept pair is returned exactly as read. A skipped
record is counted under the first of these reasons that applies:

  * not two fields: a TSV line without exactly one tab.
  * empty: a side is empty or only whitespace.
  * too long: a side has more than `char_limit(max_len)` characters; in a
    corpus of joined verses (verses.py), a verse of a side has, since such
    records are cut into windows of whole verses before they meet max_len.
  * invalid UTF-8: a side holds bytes that do not decode; readers decode with
    `errors='surrogateescape'`, which turns exactly those bytes into lone
    surrogates, code points that valid UTF-8 never yields.
  * control characters: a side holds a C0 or C1 control character (or DEL)
    other than tab, e.g. NUL or the ESC of a terminal escape sequence.
"""

import collections
import re
from typing import Iterable, Sequence

NOT_TWO_FIELDS = 'not two fields'
EMPTY = 'empty'
TOO_LONG = 'too long'
INVALID_UTF8 = 'invalid UTF-8'
CONTROL_CHARACTERS = 'control characters'
REASONS = (NOT_TWO_FIELDS, EMPTY, TOO_LONG, INVALID_UTF8, CONTROL_CHARACTERS)

# sentencepiece's default `max_sentencepiece_length` (tokenizer.py keeps it):
# no learnt piece spans more characters, so a side longer than this many
# characters per token of max_len cannot fit in max_len tokens and would be
# dropped after tokenisation anyway. Dropping it first keeps a megabyte line
# away from the vocabulary trainer, and loses only pathological lines: long
# runs of whitespace, which normalisation collapses, or of characters unseen
# in training, which become a single unknown piece.
MAX_CHARS_PER_PIECE = 16

# One search finds both kinds of bad character; which kind is only asked of
# the rare record that has one. Cleaning takes about 2 us a pair (measured on
# bible_es_en), so about 10 s for WMT14's 4.5M.
_SUSPECT = re.compile('[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]')
_LONE_SURROGATE = re.compile('[\ud800-\udfff]')


def char_limit(max_len: int) -> int:
  """The most characters a side may have for `max_len` tokens per side."""
  return MAX_CHARS_PER_PIECE * max_len


def _longest(text: str, separator: str) -> int:
  """Characters of the text, or of its longest verse with a separator."""
  if not separator:
    return len(text)
  return max(len(verse) for verse in text.split(separator))


def _reason(record: Sequence[str], max_chars: int,
            separator: str) -> str | None:
  """Why `record` is skipped, or None to keep it."""
  if len(record) != 2:
    return NOT_TWO_FIELDS
  source, target = record
  if not source.strip() or not target.strip():
    return EMPTY
  if max(_longest(source, separator), _longest(target, separator)) > max_chars:
    return TOO_LONG
  if _SUSPECT.search(source) or _SUSPECT.search(target):
    if _LONE_SURROGATE.search(source) or _LONE_SURROGATE.search(target):
      return INVALID_UTF8
    return CONTROL_CHARACTERS
  return None


def clean(
    records: Iterable[Sequence[str]], max_chars: int, separator: str = ''
) -> tuple[list[tuple[str, str]], collections.Counter[str]]:
  """Keeps the well-formed (source, target) pairs of `records`.

  Args:
    records: the fields of each example; a well-formed one has two.
    max_chars: the most characters a side may have (see `char_limit`).
    separator: the verse separator of a corpus of joined verses, whose
      verses max_chars then limits one by one; '' for sentences.

  Returns:
    The kept pairs in their original order, and how many records were skipped
    for each reason (reasons with no skipped record are absent).
  """
  kept = []
  skipped = collections.Counter()
  for record in records:
    reason = _reason(record, max_chars, separator)
    if reason is None:
      kept.append((record[0], record[1]))
    else:
      skipped[reason] += 1
  return kept, skipped


def summary(
    split: str, total: int, skipped: collections.Counter[str], max_chars: int
) -> str:
  """One log line: how many of a split's records were skipped, and why."""
  if not skipped:
    return f'{split}: kept all {total:,} pairs.'
  names = {TOO_LONG: f'longer than {max_chars:,} characters'}
  reasons = ', '.join(f'{skipped[reason]:,} {names.get(reason, reason)}'
                      for reason in REASONS if skipped[reason])
  return (f'{split}: skipped {sum(skipped.values()):,} of {total:,} pairs: '
          f'{reasons}.')
