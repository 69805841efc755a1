"""The config a workdir was trained with: checked on resume, then recorded.

A checkpoint fixes the fields that define what its parameters mean (the
config.model fields, except those that only change how the same function is
computed or only regularise training; the options of the mechanisms and the
position scheme in use, except those each mechanism declares resumable in
its `RESUMABLE_FIELDS`; the task, the corpus, languages and vocabulary size,
a diagnostic task's lengths, item counts and queries) and where its data stream stands (data.max_len, the length of a packed
row, and batch_size); with learned position embeddings, eval.max_decode_len
too. Resuming it under other values would load weights into another model,
fail on shapes, or read on in a different data order.
config.seed is checked by the data stream itself when it restores.

Everything else may change on resume: the length of training
(num_train_steps, max_train_seconds), evaluation, logging and checkpoint
intervals, keep_checkpoints, data_dir, the optimizer's hyper-parameters,
and the device mesh (checkpoints restore onto any device count and layout).
The global batch_size stays fixed because the stream position in the
checkpoint counts batches of that size, so another size would skip or repeat
part of the epoch; it does not depend on the device count, so moving a run
to another machine never requires changing it.
"""

import json
import os
from typing import Any

import ml_collections

from attention_jax import attention
from attention_jax import run_records
from attention_jax.model import from_config
from attention_jax.model.config import PLACES

_FIXED_OUTSIDE_MODEL = ('task', 'data.dataset', 'data.source', 'data.target',
                        'data.vocab_size', 'data.max_len', 'data.lengths',
                        'data.num_items', 'data.num_queries', 'batch_size')
# Model fields that only change how the same function is computed (numerics,
# fused kernels), or only regularise training.
_FREE_MODEL_FIELDS = ('dtype', 'implementation', 'dropout_rate',
                      'attention_dropout_rate')


def _path(workdir: str) -> str:
  return os.path.join(workdir, 'config.json')


def _flatten(tree: dict, prefix: str = '') -> dict[str, Any]:
  flat = {}
  for name, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{name}.'))
    else:
      flat[f'{prefix}{name}'] = value
  return flat


def _fixed_fields(flat: dict[str, Any]) -> list[str]:
  """Dotted names of the fields a checkpoint of this config depends on."""
  in_use = {name.strip() for place in PLACES
            for name in (flat.get(f'model.{place}')
                         or flat.get('model.attention')).split(',')}
  fields = []
  for name in flat:
    parts = name.split('.')
    if parts[0] != 'model' or parts[1] in _FREE_MODEL_FIELDS:
      continue
    if parts[1] == 'options':
      # Only the options of the mechanisms the checkpoint was trained with,
      # less those that only change how they are computed.
      mechanism, field = parts[2], parts[3]
      if (mechanism not in in_use or field in
          attention.MECHANISMS.get(mechanism).RESUMABLE_FIELDS):
        continue
    elif (parts[1] == 'position_options'
          and parts[2] != flat.get('model.position_scheme')):
      continue
    fields.append(name)
  fields += _FIXED_OUTSIDE_MODEL
  if flat.get('model.position_scheme') == 'learned':
    # One learned embedding per position, up to the longer of data.max_len
    # and the decoding length.
    fields.append('eval.max_decode_len')
  return fields


class ResumeRefusedError(ValueError):
  """The workdir's checkpoint was trained under a config that differs in a
  field it depends on."""


def check_resumable(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume the checkpoint in `workdir` under `config` if it differs.

  Compares with the config.json of the run that wrote the checkpoint; fields
  that either side lacks (added to or removed from the code since) are
  skipped.

  Raises:
    ResumeRefusedError: naming each differing field (old -> new) and the fix.
  """
  if not os.path.exists(_path(workdir)):
    return
  old_config = load(workdir)
  from_config.check_not_legacy(old_config.get('model', {}), _path(workdir))
  old = _flatten(old_config)
  new = _flatten(json.loads(config.to_json_best_effort()))
  changes = [
      f'config.{name}: {old[name]!r} -> {new[name]!r}'
      for name in _fixed_fields(old)
      if name in old and name in new and old[name] != new[name]
  ]
  if changes:
    raise ResumeRefusedError(
        f'{workdir} holds a checkpoint of another model or data stream; '
        'these fields differ from the run that wrote it (old -> new):\n  '
        + '\n  '.join(changes)
        + '\nTrain this config in a new --workdir, or set the fields back to '
        'their old values to resume.'
    )


def load(workdir: str) -> dict:
  """The config recorded in `workdir/config.json`, as nested dicts.

  Raises:
    DamagedRecordError: the file is empty or not JSON, naming it and the fix.
  """
  return run_records.read_json(
      _path(workdir),
      'It records the config that trained the checkpoints of this workdir. '
      'Remove it and rerun the training command of this workdir with that '
      'config: once the checkpoint restores, the run records it again.',
  )


def record(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes `config` as `workdir/config.json`, which translation reads."""
  run_records.write_text(_path(workdir), config.to_json_best_effort(indent=2))
