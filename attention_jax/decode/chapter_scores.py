"""Scores of chapter translations: whole chapters, and verse by verse.

A chapter's translation splits back into verses at its separators
(data/verses.py). Two corpus scores come out of one set of translations:

  * chapter: sacrebleu's BLEU and chrF (bleu.py) with one segment per
    chapter, translation against the reference chapter (separators removed
    from both, so that they count as neither words nor characters).
  * verse: one segment per verse of every aligned chapter (a translation
    with exactly as many verses as its reference), scored against the same
    reference verses as a sentence-level model's translations; a misaligned
    chapter (too few or too many separators) enters this corpus as one
    segment, the whole chapter, so that no reference text and no translated
    text is dropped and every variant is scored on the whole split. With
    every chapter aligned, this is the corpus BLEU of the verses.

`ChapterScores.misaligned` counts the chapters scored whole in the verse
corpus.
"""

import dataclasses
from typing import Sequence

from attention_jax.data import verses
from attention_jax.decode import bleu


@dataclasses.dataclass(frozen=True)
class ChapterScores:
  """Chapter- and verse-level scores of a split's chapter translations."""

  chapter: bleu.Scores
  verse: bleu.Scores
  # The chapter-level corpus: one line per chapter, separators removed.
  chapter_hypotheses: list[str]
  chapter_references: list[str]
  # Chapters whose translation has another number of verses than the
  # reference: one segment each in the verse-level corpus.
  misaligned: int
  # The verse-level corpus, segment by segment (a verse, or a misaligned
  # chapter's separator-free text).
  verse_hypotheses: list[str]
  verse_references: list[str]

  @property
  def chapters(self) -> int:
    return len(self.chapter_references)

  def results(self, split: str) -> dict[str, float | int | str]:
    """The `results.json` entries of a split, e.g. 'test_verse_bleu'."""
    return {
        f'{split}_chapter_bleu': self.chapter.bleu,
        f'{split}_chapter_chrf': self.chapter.chrf,
        f'{split}_verse_bleu': self.verse.bleu,
        f'{split}_verse_chrf': self.verse.chrf,
        f'{split}_chapters': self.chapters,
        f'{split}_chapters_misaligned': self.misaligned,
        f'{split}_verse_segments': len(self.verse_references),
    }

  def files(self, split: str) -> dict[str, list[str]]:
    """The verse-level corpus as `translations/` files, one segment a line."""
    return {f'{split}_verses.txt': self.verse_hypotheses,
            f'{split}_verse_references.txt': self.verse_references}


def without_separators(text: str, separator: str) -> str:
  """The chapter's verses joined by spaces: what a chapter score reads."""
  return ' '.join(verses.split(text, separator))


def verse_segments(
    hypotheses: Sequence[str], references: Sequence[str], separator: str
) -> tuple[list[str], list[str], int]:
  """The verse-level corpus of chapter translations (see the module doc).

  Args:
    hypotheses: one translation per chapter, verses joined by `separator`.
    references: the reference chapters, joined the same way.
    separator: the verse separator.

  Returns:
    (hypothesis segments, reference segments, misaligned chapters).

  Raises:
    ValueError: the two sides differ in length.
  """
  if len(hypotheses) != len(references):
    raise ValueError(
        f'{len(hypotheses)} hypotheses for {len(references)} references.'
    )
  hyp_segments, ref_segments, misaligned = [], [], 0
  for hypothesis, reference in zip(hypotheses, references):
    hyp_verses = verses.split(hypothesis, separator)
    ref_verses = verses.split(reference, separator)
    if len(hyp_verses) == len(ref_verses):
      hyp_segments += hyp_verses
      ref_segments += ref_verses
    else:
      misaligned += 1
      hyp_segments.append(' '.join(hyp_verses))
      ref_segments.append(' '.join(ref_verses))
  return hyp_segments, ref_segments, misaligned


def score(hypotheses: Sequence[str], references: Sequence[str],
          separator: str) -> ChapterScores:
  """Chapter- and verse-level BLEU and chrF of chapter translations.

  Raises:
    ValueError: the two sides differ in length.
  """
  hyp_segments, ref_segments, misaligned = verse_segments(
      hypotheses, references, separator)
  hyp_chapters = [without_separators(h, separator) for h in hypotheses]
  ref_chapters = [without_separators(r, separator) for r in references]
  return ChapterScores(
      chapter=bleu.corpus_scores(hyp_chapters, ref_chapters),
      verse=bleu.corpus_scores(hyp_segments, ref_segments),
      chapter_hypotheses=hyp_chapters,
      chapter_references=ref_chapters,
      misaligned=misaligned,
      verse_hypotheses=hyp_segments,
      verse_references=ref_segments,
  )
