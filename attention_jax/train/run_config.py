"""The config a workdir was trained with: checked on resume, then recorded.

A checkpoint fixes the fields that define what its parameters mean (the
config.model fields, except those that only change how the same function is
computed or only regularise training; the corpus, languages and vocabulary
size) and where its data stream stands (data.max_len, the length of a packed
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

_FIXED_OUTSIDE_MODEL = ('data.dataset', 'data.source', 'data.target',
                        'data.vocab_size', 'data.max_len', 'batch_size')
# Model fields that only change how the same function is computed (numerics,
# kernels, block sizes of exact attention), or only regularise training.
_FREE_MODEL_FIELDS = ('dtype', 'implementation', 'chunk_size', 'dropout_rate',
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
  fields = [
      name for name in flat
      if name.startswith('model.')
      and name.split('.')[1] not in _FREE_MODEL_FIELDS
  ]
  fields += _FIXED_OUTSIDE_MODEL
  if flat.get('model.position_scheme') == 'learned':
    # One learned embedding per position, up to the longer of data.max_len
    # and the decoding length.
    fields.append('eval.max_decode_len')
  return fields


def check_resumable(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume the checkpoint in `workdir` under `config` if it differs.

  Compares with the config.json of the run that wrote the checkpoint; fields
  that either side lacks (added to or removed from the code since) are
  skipped.

  Raises:
    ValueError: naming each differing field (old -> new) and the fix.
  """
  if not os.path.exists(_path(workdir)):
    return
  with open(_path(workdir)) as f:
    old = _flatten(json.load(f))
  new = _flatten(json.loads(config.to_json_best_effort()))
  changes = [
      f'config.{name}: {old[name]!r} -> {new[name]!r}'
      for name in _fixed_fields(old)
      if name in old and name in new and old[name] != new[name]
  ]
  if changes:
    raise ValueError(
        f'{workdir} holds a checkpoint of another model or data stream; '
        'these fields differ from the run that wrote it (old -> new):\n  '
        + '\n  '.join(changes)
        + '\nTrain this config in a new --workdir, or set the fields back to '
        'their old values to resume.'
    )


def record(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes `config` as `workdir/config.json`, which translation reads."""
  with open(_path(workdir), 'w') as f:
    f.write(config.to_json_best_effort(indent=2))
