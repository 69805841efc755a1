"""What defines a workdir's token ids, recorded beside its config.json.

A checkpoint's embeddings and softmax are indexed by the ids of one
vocabulary, trained on one corpus. `workdir/data.json` records both: the
corpus's vocabulary key (for parallel_text a hash of the training files, for
a TFDS corpus its name and direction) and the SHA-256 of `workdir/vocab.model`.
A resume under another corpus, or with another vocab.model in the workdir, is
refused; translation checks the vocabulary against the record too.
"""

import hashlib
import os

from attention_jax import run_records

FILE_NAME = 'data.json'
VOCAB_NAME = 'vocab.model'


def path(workdir: str) -> str:
  return os.path.join(workdir, FILE_NAME)


def vocab_path(workdir: str) -> str:
  return os.path.join(workdir, VOCAB_NAME)


def file_sha256(file: str) -> str:
  with open(file, 'rb') as f:
    return hashlib.file_digest(f, 'sha256').hexdigest()


def read(workdir: str) -> dict | None:
  """The record of `workdir`, or None for a workdir written before it existed.

  Raises:
    ValueError: the record is not a JSON object, naming the file.
  """
  if not os.path.exists(path(workdir)):
    return None
  record = run_records.read_json(
      path(workdir),
      'It records which corpus and vocabulary the checkpoint was trained '
      'with: restore it from a backup, or train in a new --workdir.')
  if not isinstance(record, dict):
    raise run_records.DamagedRecordError(
        f'{path(workdir)} is damaged (not a JSON object); restore it from a '
        'backup, or train in a new --workdir.')
  return record


def write(workdir: str, corpus: str) -> None:
  """Records `corpus` and the hash of the workdir's vocab.model, atomically."""
  run_records.write_json(path(workdir), {
      'corpus': corpus, 'vocab_sha256': file_sha256(vocab_path(workdir))})


def check_vocabulary(workdir: str) -> None:
  """Refuses a vocab.model that is not the one the workdir recorded.

  Raises:
    ValueError: naming the file, both hashes and the fix.
  """
  record = read(workdir)
  if record is None:
    return
  actual = file_sha256(vocab_path(workdir))
  if actual != record.get('vocab_sha256'):
    raise ValueError(
        f'{vocab_path(workdir)} is not the vocabulary the checkpoint was '
        f'trained with: its SHA-256 is {actual[:12]}, {path(workdir)} '
        f'records {str(record.get("vocab_sha256"))[:12]}. Its token ids would '
        'mean other pieces. Put the original vocab.model back, or train in a '
        'new --workdir.'
    )


def check_corpus(workdir: str, corpus: str) -> None:
  """Refuses to resume `workdir` on a corpus other than the recorded one.

  Raises:
    ValueError: naming the old and new corpus and the fix.
  """
  record = read(workdir)
  if record is None or record.get('corpus') == corpus:
    return
  raise ValueError(
      f'{workdir} holds a checkpoint trained on corpus {record.get("corpus")!r}'
      f' (recorded in {path(workdir)}), but config.data now names corpus '
      f'{corpus!r}: the training files changed (parallel_text names a corpus '
      'by a hash of their contents) or another dataset or direction is '
      'configured. Its vocabulary, and so the meaning of every token id, '
      'would change. Put the original training files back to resume, or '
      'train on the new corpus in a new --workdir.'
  )
