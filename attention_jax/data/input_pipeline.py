"""From a parallel corpus to cleaned, tokenised pairs and a vocabulary."""

import dataclasses
import os
import shutil

from absl import logging
import ml_collections
import numpy as np
import sentencepiece as spm

from attention_jax.data import cleaning
from attention_jax.data import corpora
from attention_jax.data import data_identity
from attention_jax.data import tokenizer
from attention_jax.data import verse_windows
from attention_jax.data import verses

Pair = tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class TranslationData:
  """Tokenised splits; `*_text` keep the raw sentences for BLEU.

  In a corpus of joined verses (`verse_separator` set), `train` and `valid`
  hold windows of whole verses (verse_windows.py) and `*_text` whole
  chapters.
  """

  tokenizer: spm.SentencePieceProcessor
  train: list[Pair]
  valid: list[Pair]
  valid_text: list[tuple[str, str]]
  test_text: list[tuple[str, str]]
  verse_separator: str = ''


def encode(sp: spm.SentencePieceProcessor, texts: list[str]) -> list[np.ndarray]:
  """Token ids with EOS appended, as int32 arrays."""
  return [
      np.asarray(ids + [tokenizer.EOS_ID], np.int32) for ids in sp.encode(texts)
  ]


def tokenize_pairs(
    sp: spm.SentencePieceProcessor,
    pairs: list[tuple[str, str]],
    max_len: int,
) -> list[Pair]:
  """Tokenises pairs and drops those longer than `max_len` on either side."""
  sources = encode(sp, [s for s, _ in pairs])
  targets = encode(sp, [t for _, t in pairs])
  kept = [
      (s, t)
      for s, t in zip(sources, targets)
      if len(s) <= max_len and len(t) <= max_len
  ]
  if len(kept) < len(pairs):
    logging.info(
        'Dropped %d of %d pairs longer than max_len=%d tokens.',
        len(pairs) - len(kept), len(pairs), max_len,
    )
  return kept


def clean_splits(
    records: dict[str, list[corpora.Record]], max_len: int,
    separator: str = '',
) -> dict[str, list[tuple[str, str]]]:
  """Skips corrupt pairs of every split, logging one summary line per split.

  Args:
    records: every split's records.
    max_len: `config.data.max_len`, which bounds the characters of a side.
    separator: the corpus's verse separator ('' for sentences): the bound
      then applies to each verse.

  Raises:
    ValueError: no training pair is left.
  """
  max_chars = cleaning.char_limit(max_len)
  splits = {}
  for split, split_records in records.items():
    splits[split], skipped = cleaning.clean(split_records, max_chars,
                                            separator)
    summary = cleaning.summary(split, len(split_records), skipped, max_chars)
    logging.info(summary)
    if split == 'train' and not splits[split]:
      raise ValueError(f'No usable training pair. {summary}')
  return splits


def load(data_config: ml_collections.ConfigDict, workdir: str, *,
         resuming: bool = False) -> TranslationData:
  """Prepares the dataset and vocabulary if needed, and tokenises the splits.

  Corrupt pairs are skipped first (see cleaning.py), so that they reach
  neither the vocabulary trainer nor BLEU. The vocabulary is trained on the
  training split only, stored beside the prepared dataset for reuse by later
  runs, and copied into the workdir so that translation needs nothing but the
  workdir; data_identity.py records which corpus and vocabulary that is.

  Args:
    data_config: `config.data`.
    workdir: the run's directory.
    resuming: the workdir holds a checkpoint, whose token ids are those of
      the workdir's vocab.model: the corpus must be the recorded one, and
      that vocabulary is used.

  Raises:
    ValueError: resuming on another corpus or with another vocabulary than
      the workdir records, naming what changed and the fix.
  """
  data_dir = os.path.expanduser(data_config.data_dir)
  corpus = corpora.vocab_key(data_config)
  workdir_vocab = data_identity.vocab_path(workdir)
  if resuming:
    data_identity.check_corpus(workdir, corpus)
  separator = corpora.verse_separator(data_config)
  splits = clean_splits(corpora.load_splits(data_config, data_dir),
                        data_config.max_len, separator)
  if (resuming and data_identity.read(workdir) is not None
      and os.path.exists(workdir_vocab)):
    data_identity.check_vocabulary(workdir)
    sp = spm.SentencePieceProcessor(model_file=workdir_vocab)
  else:
    sp = _prepare_vocabulary(data_config, data_dir, splits['train'], corpus,
                             workdir, resuming, separator)

  def tokenized(pairs):
    if separator:
      pairs = verse_windows.window_pairs(sp, pairs, data_config.max_len,
                                         separator)
    return tokenize_pairs(sp, pairs, data_config.max_len)

  return TranslationData(
      tokenizer=sp,
      train=tokenized(splits['train']),
      valid=tokenized(splits['validation']),
      valid_text=splits['validation'],
      test_text=splits['test'],
      verse_separator=separator,
  )


def _prepare_vocabulary(data_config, data_dir, train_pairs, corpus, workdir,
                        resuming, separator) -> spm.SentencePieceProcessor:
  """Trains or loads the corpus's vocabulary; copies and records it.

  A corpus of joined verses trains on its verses one by one (a chapter is
  longer than the trainer's longest sentence), with the separator as a
  user-defined symbol.
  """
  vocab_path = os.path.join(
      data_dir, 'vocab', f'{corpus}_{data_config.vocab_size}.model'
  )
  texts = (text for pair in train_pairs for text in pair)
  if separator:
    texts = (verse for text in texts
             for verse in verses.split(text, separator))
  sp = tokenizer.train_or_load(
      texts, data_config.vocab_size, vocab_path,
      user_defined_symbols=(separator,) if separator else (),
  )
  workdir_vocab = data_identity.vocab_path(workdir)
  if (not os.path.exists(workdir_vocab) or data_identity.file_sha256(
      workdir_vocab) != data_identity.file_sha256(vocab_path)):
    if resuming and os.path.exists(workdir_vocab):
      # A workdir from before data.json: its checkpoint's ids are those of
      # its own vocab.model, which the corpus no longer gives.
      raise ValueError(
          f'{workdir_vocab}, the vocabulary of the checkpoint in {workdir}, '
          f'differs from the vocabulary of the configured corpus '
          f'({vocab_path}): the corpus or its vocabulary changed since the '
          'checkpoint was written. Put the original training files back to '
          'resume, or train in a new --workdir.'
      )
    os.makedirs(workdir, exist_ok=True)
    shutil.copyfile(vocab_path, workdir_vocab + '.tmp')
    os.replace(workdir_vocab + '.tmp', workdir_vocab)
  data_identity.write(workdir, corpus)
  return sp
