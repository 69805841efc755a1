"""`parallel_text`: a corpus of your own, from plain-text files.

Each of `config.data.train`, `.validation` and `.test` names one split:

  * a path ending in `.tsv`: one `source<TAB>target` pair per line;
  * any other path is a PREFIX of two aligned files, `PREFIX.SOURCE` and
    `PREFIX.TARGET`, line i of one translating line i of the other, with
    SOURCE and TARGET the codes in `config.data.source`/`target`
    (`corpus/train` for `corpus/train.es` and `corpus/train.en`, the Moses
    and fairseq convention).

Files are UTF-8, split on '\\n' only (a '\\r' ending a line is dropped, so
Windows files read the same), with no quoting: a tab is an ordinary character
in an aligned file and a field separator in a TSV file. Undecodable bytes
are kept as lone surrogates for cleaning.py to count and skip.
"""

import hashlib
import os

import ml_collections

SPLITS = ('train', 'validation', 'test')
TSV_SUFFIX = '.tsv'


def _formats(source: str, target: str) -> str:
  return (f'A path ending in {TSV_SUFFIX} is a file of source<TAB>target '
          'lines; any other path is the PREFIX of two aligned files '
          f'PREFIX.{source} and PREFIX.{target}.')


def split_files(data_config: ml_collections.ConfigDict, split: str
                ) -> tuple[str, ...]:
  """The files of a split: `(tsv,)` or `(prefix.source, prefix.target)`."""
  path = os.path.expanduser(data_config[split])
  if path.endswith(TSV_SUFFIX):
    return (path,)
  return (f'{path}.{data_config.source}', f'{path}.{data_config.target}')


def check(data_config: ml_collections.ConfigDict) -> None:
  """Refuses missing languages, empty paths and missing files.

  Raises:
    ValueError: a language code or a split's path is empty.
    FileNotFoundError: a split's file does not exist.
  """
  source, target = data_config.source, data_config.target
  if not source or not target or source == target:
    raise ValueError(
        'parallel_text needs two different language codes in '
        f'config.data.source/target (the suffixes of aligned files), got '
        f'{(source, target)}.'
    )
  formats = _formats(source, target)
  for split in SPLITS:
    if not data_config.get(split):
      raise ValueError(
          f'config.data.{split} is empty; parallel_text needs a path for '
          f'every split, e.g. --config.data.{split}=corpus/{split}. '
          f'{formats} Start from experiments/configs/parallel_text.py, which '
          'has these fields.'
      )
    for file in split_files(data_config, split):
      if not os.path.isfile(file):
        raise FileNotFoundError(
            f'config.data.{split}={data_config[split]!r}: there is no file '
            f'{file}. {formats}'
        )


def read_lines(path: str) -> list[str]:
  """The lines of a UTF-8 file, without line endings or a byte-order mark."""
  with open(path, 'rb') as f:
    text = f.read().decode('utf-8', 'surrogateescape').removeprefix('\ufeff')
  lines = text.split('\n')
  if lines[-1] == '':
    lines.pop()  # After the final newline, or of an empty file.
  return [line.removesuffix('\r') for line in lines]


def read(data_config: ml_collections.ConfigDict, split: str
         ) -> list[tuple[str, ...]]:
  """The fields of each line of a split: `(source, target)` when well formed.

  Raises:
    ValueError: the two aligned files have different line counts.
  """
  files = split_files(data_config, split)
  if len(files) == 1:
    return [tuple(line.split('\t')) for line in read_lines(files[0])]
  sources, targets = (read_lines(file) for file in files)
  if len(sources) != len(targets):
    raise ValueError(
        f'config.data.{split}: {files[0]} has {len(sources):,} lines but '
        f'{files[1]} has {len(targets):,}; aligned files need one line per '
        'sentence on both sides. Realign them (an empty line keeps the place '
        'of a missing sentence and is skipped).'
    )
  return list(zip(sources, targets))


def fingerprint(data_config: ml_collections.ConfigDict) -> str:
  """12 hex digits of the SHA-256 of the training files' contents.

  Part of the vocabulary's file name, so that two corpora, or a corpus and
  its edited version, never share a vocabulary, while a copy of a corpus
  elsewhere still finds its own.
  """
  digest = hashlib.sha256()
  for file in split_files(data_config, 'train'):
    with open(file, 'rb') as f:
      digest.update(hashlib.file_digest(f, 'sha256').digest())
  return digest.hexdigest()[:12]
