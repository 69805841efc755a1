"""`--mode=attention_stats`: per-head summaries (summaries.py) over a split.

The split's sentence pairs are teacher-forced through the model in WORKDIR,
the reference as the target, and every layer and head is summarised.
Written: WORKDIR/attention_stats/<split>.json (the rows, the mechanism of
each map and the layers without maps) and <split>.csv (the rows).
"""

import csv
import json
import os

import jax
import ml_collections

from attention_jax import sharding
from attention_jax import translate
from attention_jax.data import corpora
from attention_jax.data import input_pipeline
from attention_jax.maps import attend
from attention_jax.maps import capture
from attention_jax.maps import summaries

SPLITS = ('validation', 'test')
_COLUMNS = ('map', 'head', 'queries') + summaries.STATISTICS


def write_stats(path_stem: str, rows: list[dict], mechanisms: dict[str, str],
                without_weights: dict[str, str], sentences: int) -> None:
  """`path_stem`.json and `path_stem`.csv of summaries.head_summaries rows."""
  with open(path_stem + '.json', 'w') as f:
    json.dump({'sentences': sentences, 'mechanisms': mechanisms,
               'without_weights': without_weights, 'heads': rows}, f,
              indent=1)
  with open(path_stem + '.csv', 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)


def attention_stats(workdir: str, split: str = 'test',
                    max_sentences: int = 500) -> list[dict]:
  """Summarises the first `max_sentences` pairs of `split`.

  Returns:
    The rows written (summaries.head_summaries).

  Raises:
    ValueError: for a split not in SPLITS.
    FileNotFoundError: when `workdir` holds no trained run.
  """
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; choose from {SPLITS}.')
  mesh = sharding.make_mesh(ml_collections.ConfigDict({'data': -1, 'fsdp': 1}))
  config, cfg, sp, params = translate.load_params(workdir, mesh)
  data_dir = os.path.expanduser(config.data.data_dir)
  pairs = input_pipeline.clean_splits(
      corpora.load_splits(config.data, data_dir),
      config.data.max_len)[split][:max_sentences]
  sources = [attend.encode_cut(sp, source, cfg.max_len) for source, _ in pairs]
  targets = [attend.encode_cut(sp, target, cfg.max_len) for _, target in pairs]
  missing = capture.without_weights(cfg)
  maps = (capture.sentence_maps(cfg, params, sources, targets)
          if len(missing) < len(capture.map_names(cfg)) else [])
  rows = summaries.head_summaries(maps)
  if jax.process_index() == 0:
    directory = os.path.join(workdir, 'attention_stats')
    os.makedirs(directory, exist_ok=True)
    write_stats(os.path.join(directory, split), rows,
                capture.map_names(cfg), missing, len(pairs))
  return rows

