"""Flags and entry points of `--mode=attend` and `--mode=attention_stats`."""

import sys

from absl import flags

from attention_jax.maps import attend
from attention_jax.maps import split_stats

_ATTEND_DIR = flags.DEFINE_string(
    'attend_dir', None,
    'attend: where to write the maps (default WORKDIR/attention_maps).')
_STATS_SPLIT = flags.DEFINE_enum(
    'stats_split', 'test', list(split_stats.SPLITS),
    'attention_stats: the split to summarise.')
_STATS_SENTENCES = flags.DEFINE_integer(
    'stats_sentences', 500, 'attention_stats: the first this many pairs.')


def attend_stdin(workdir: str) -> None:
  """Maps of the sentences on stdin (see maps/attend.py)."""
  attend.attend(workdir, sys.stdin, _ATTEND_DIR.value)


def stats(workdir: str) -> None:
  """Per-head summaries of the chosen split (see maps/split_stats.py)."""
  split_stats.attention_stats(workdir, _STATS_SPLIT.value,
                              _STATS_SENTENCES.value)
