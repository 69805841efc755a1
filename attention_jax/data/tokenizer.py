"""A joint sentencepiece vocabulary, trained once on the training split."""

import os
import tempfile
from typing import Iterable, Sequence

from absl import logging
import sentencepiece as spm

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
_MAX_TRAINING_SENTENCES = 4_000_000


def train_or_load(
    texts: Iterable[str], vocab_size: int, model_path: str,
    user_defined_symbols: Sequence[str] = (),
) -> spm.SentencePieceProcessor:
  """Loads `model_path`, or trains a unigram model on `texts` and saves it.

  Args:
    texts: training sentences of both languages (only read when training).
    vocab_size: number of pieces, including padding, EOS and unknown.
    model_path: where the `.model` file lives; it is written atomically so a
      run killed while training never leaves a truncated vocabulary behind.
    user_defined_symbols: strings kept as one piece wherever they occur (a
      verse separator), counted in vocab_size. With none (the default) the
      trainer gets exactly the arguments it had before this option existed,
      so earlier vocabularies are unchanged.

  Returns:
    The loaded processor.
  """
  if not os.path.exists(model_path):
    spm.set_random_generator_seed(0)
    os.makedirs(os.path.dirname(model_path) or '.', exist_ok=True)
    symbols = ({'user_defined_symbols': list(user_defined_symbols)}
               if user_defined_symbols else {})
    with tempfile.TemporaryDirectory(dir=os.path.dirname(model_path)) as tmp:
      prefix = os.path.join(tmp, 'spm')
      logging.info('Training a %d-piece sentencepiece model.', vocab_size)
      spm.SentencePieceTrainer.train(
          sentence_iterator=iter(texts),
          model_prefix=prefix,
          vocab_size=vocab_size,
          model_type='unigram',
          character_coverage=1.0,
          pad_id=PAD_ID,
          eos_id=EOS_ID,
          unk_id=UNK_ID,
          bos_id=-1,
          # Large corpora (WMT14: 9M sentences) train on a uniform sample,
          # which bounds the trainer's time and memory.
          input_sentence_size=_MAX_TRAINING_SENTENCES,
          shuffle_input_sentence=True,
          # Keeps the trainer deterministic and quiet.
          num_threads=1,
          minloglevel=2,
          **symbols,
      )
      os.replace(prefix + '.model', model_path)
  return spm.SentencePieceProcessor(model_file=model_path)
