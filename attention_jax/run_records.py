"""Run records that a run or a study reads back: written whole, read with care.

A JSON record (config.json, results.json, study.json, ...) is written to a
temporary file beside it, flushed to disk and renamed over the old one, so a
process killed mid-write, or a full disk, leaves the previous record whole.
A JSONL log (metrics.jsonl, attempts.jsonl) grows by whole lines; a line cut
short by a kill is dropped before the next append, and readers skip it with
a warning naming the file.

tensorflow_datasets' `py_utils.atomic_write` renames too but neither syncs
nor removes its temporary file on error, and importing it costs seconds that
the study report (no JAX, no TensorFlow) should not pay.
"""

import json
import os
from typing import Any, Callable

from absl import logging


class DamagedRecordError(ValueError):
  """A run record is empty or not JSON; the message names it and the fix."""


def _write_all(fd: int, data: bytes, path: str) -> None:
  view = memoryview(data)
  try:
    while view:
      view = view[os.write(fd, view):]
  except OSError as e:
    # os.write names no file: "No space left on device" alone says not where.
    e.filename = e.filename or path
    raise


def write_bytes(path: str, data: bytes) -> None:
  """Replaces `path` by `data` in one step: readers see the old or the new."""
  directory, name = os.path.split(os.path.abspath(path))
  temporary = os.path.join(directory, f'.{name}.{os.getpid()}.tmp')
  fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
  try:
    try:
      _write_all(fd, data, path)
      # On disk before the rename, or a crash could leave the new name with
      # no content. (The rename itself needs no sync: undone, it leaves the
      # previous whole record.)
      os.fsync(fd)
    finally:
      os.close(fd)
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode('utf-8'))


def write_json(path: str, value: Any) -> None:
  write_text(path, json.dumps(value, indent=2, default=str) + '\n')


def read_json(path: str, fix: str) -> Any:
  """The JSON value in `path`.

  Args:
    path: the record.
    fix: what the user should do if it is damaged, for the error message.

  Raises:
    DamagedRecordError: the file is empty or not JSON, naming it and `fix`.
  """
  with open(path, 'rb') as f:
    data = f.read()
  try:
    if not data.strip():
      raise ValueError('it is empty')
    return json.loads(data)
  except ValueError as e:  # JSONDecodeError and UnicodeDecodeError too.
    raise DamagedRecordError(
        f'{path} is damaged ({e}), probably cut short by a killed process or '
        f'a full disk. {fix}'
    ) from None


def _drop_torn_tail(path: str) -> None:
  """Cuts a last line without its newline (a killed append) off `path`."""
  with open(path, 'rb+') as f:
    size = f.seek(0, os.SEEK_END)
    if size == 0:
      return
    f.seek(size - 1)
    if f.read(1) == b'\n':
      return
    f.seek(0)
    whole = f.read().rfind(b'\n') + 1
    logging.warning('%s: dropping a last line cut short (%d bytes).', path,
                    size - whole)
    f.truncate(whole)


def append_jsonl(path: str, record: dict) -> None:
  """Appends `record` to `path` as one whole line."""
  if os.path.exists(path):
    _drop_torn_tail(path)
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
  try:
    _write_all(fd, (json.dumps(record, default=str) + '\n').encode('utf-8'),
               path)
  finally:
    os.close(fd)


def read_jsonl(path: str) -> list[dict]:
  """The records of `path` ([] if it is missing), less damaged lines.

  A line that is not JSON (cut short by a kill, or zeros a crash left) is
  skipped with a warning naming the file and the line.
  """
  if not os.path.exists(path):
    return []
  records = []
  with open(path, 'rb') as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except ValueError:
        logging.warning('%s: skipped line %d, which is not JSON (cut short '
                        'by a killed process?).', path, number)
  return records


def keep_jsonl(path: str, keep: Callable[[dict], bool]) -> None:
  """Rewrites `path` in one step with only the records `keep` accepts."""
  if not os.path.exists(path):
    return
  write_text(path, ''.join(json.dumps(r) + '\n'
                           for r in read_jsonl(path) if keep(r)))


def remove(path: str) -> None:
  """Removes the record `path`, if there is one."""
  try:
    os.remove(path)
  except FileNotFoundError:
    pass
