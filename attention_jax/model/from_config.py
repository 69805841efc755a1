"""Turns the model part of an experiment config into a `TransformerConfig`.

Mechanism options come from `config.model.options.<name>` and the position
scheme's from `config.model.position_options.<name>`; only those of the
mechanisms and scheme in use travel into the model.
"""

import dataclasses

import jax.numpy as jnp
import ml_collections

from attention_jax import attention
from attention_jax.attention import positions
from attention_jax.model.config import PLACES
from attention_jax.model.config import TransformerConfig

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# Model fields of configs written before mechanisms carried their own
# options (attention_jax up to commit 4294743).
_LEGACY_FIELDS = ('window_size', 'num_random_features', 'chunk_size',
                  'relative_num_buckets', 'relative_max_distance')


def check_not_legacy(model: ml_collections.ConfigDict, source: str) -> None:
  """Refuses a config written before the attention contract.

  Raises:
    ValueError: naming the old fields, where their values go now, and what
      to do with the workdir.
  """
  old = [field for field in _LEGACY_FIELDS if field in model]
  if old:
    raise ValueError(
        f'{source} was written by attention_jax before mechanisms carried '
        f'their own options (it has config.model.{", config.model.".join(old)}'
        '; these are now config.model.options.<mechanism>.<field> and '
        'config.model.position_options.relative_bias.<field>, and '
        f'mechanisms {attention.MECHANISMS.renamed()} were renamed). Its '
        'checkpoint cannot be resumed or translated by this version: train '
        'again in a new --workdir, or use commit 4294743 for this one.'
    )


def layer_mechanisms(model: ml_collections.ConfigDict,
                     place: str) -> tuple[str, ...]:
  """The mechanism of each layer at `place`, from a config's one name or
  comma-separated list of one name per layer ('linear,linear,softmax').

  Raises:
    ValueError: when a list's length is not the stack's number of layers.
  """
  field = model[place] or model.attention
  names = tuple(name.strip() for name in field.split(','))
  layers = (model.num_encoder_layers if place == 'encoder_self_attention'
            else model.num_decoder_layers)
  if len(names) == 1:
    return names * layers
  if len(names) != layers:
    stack = 'encoder' if place == 'encoder_self_attention' else 'decoder'
    raise ValueError(
        f'config.model.{place}={field!r} names {len(names)} mechanisms, one '
        f'per layer, but the {stack} has {layers} layers; give one name for '
        f'every layer or {layers} comma-separated names.')
  return names


def mechanisms_in_use(model: ml_collections.ConfigDict) -> list[str]:
  """Names of the mechanisms the model's layers use, in place order."""
  names = [name for place in PLACES
           for name in layer_mechanisms(model, place)]
  return list(dict.fromkeys(names))


def _place_field(model, place: str):
  """None (the `attention` field), one name, or a tuple of one per layer."""
  if not model[place]:
    return None
  names = layer_mechanisms(model, place)
  return names[0] if len(set(names)) == 1 else names


def transformer_config(
    config: ml_collections.ConfigDict, vocab_size: int
) -> TransformerConfig:
  """The training-mode model hyper-parameters of an experiment config.

  Every other field of `config.model` is a `TransformerConfig` field of the
  same name; the vocabulary size and maximum length come from the data.

  Raises:
    ValueError: for unknown fields, names or option values, naming them.
  """
  check_not_legacy(config.model, 'This config')
  model = config.model.to_dict()
  all_options = model.pop('options')
  position_options = model.pop('position_options')
  fields = {field.name for field in dataclasses.fields(TransformerConfig)}
  unknown = sorted(set(model) - fields)
  if unknown:
    raise ValueError(
        f'config.model has fields the model does not know: {unknown}; '
        f'valid fields are: {", ".join(sorted(fields))}.'
    )
  scheme = model['position_scheme']
  model.update(
      dtype=DTYPES[model['dtype']],
      attention_options=tuple(
          (name, attention.MECHANISMS.options(name, all_options.get(name)))
          for name in mechanisms_in_use(config.model)
      ),
      position_options=positions.SCHEMES.options(
          scheme, position_options.get(scheme)),
      **{place: _place_field(config.model, place) for place in PLACES},
  )
  return TransformerConfig(
      vocab_size=vocab_size,
      # Decoder-only diagnostic tasks decode nothing: no max_decode_len.
      max_len=max(config.data.max_len, config.eval.get('max_decode_len', 0)),
      **model,
  )
