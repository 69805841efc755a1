"""Checks an experiment config and turns its model part into a dataclass."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from attention_jax import attention
from attention_jax.attention import kernels
from attention_jax.attention import positions
from attention_jax.data import corpora
from attention_jax.model.config import TransformerConfig
from attention_jax.train import sharding

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def check_config(config: ml_collections.ConfigDict) -> None:
  """Refuses an inconsistent config before anything is compiled.

  Raises:
    ValueError: naming the offending field and how to fix it.
  """
  corpora.check_dataset(config.data)
  model = config.model
  _check_attention(model)
  for width in ('emb_dim', 'qkv_dim'):
    if model[width] % model.num_heads:
      raise ValueError(
          f'config.model.{width}={model[width]} is not divisible by '
          f'config.model.num_heads={model.num_heads}; choose a head count '
          'that divides it.'
      )
  if model.dtype not in _DTYPES:
    raise ValueError(
        f'config.model.dtype={model.dtype!r}; valid choices are: '
        f'{", ".join(_DTYPES)}.'
    )
  _check_parallelism(config)


def _check_parallelism(config: ml_collections.ConfigDict) -> None:
  """The mesh fits the devices and every batch splits over it."""
  devices = jax.device_count()
  sharding.mesh_shape(config.mesh, devices)
  sharding.logical_rules(config.mesh)
  if config.micro_batches < 1:
    raise ValueError(
        f'config.micro_batches={config.micro_batches} must be at least 1.'
    )
  rows_per_slice = devices * config.micro_batches
  if config.batch_size % rows_per_slice:
    raise ValueError(
        f'config.batch_size={config.batch_size} does not split into '
        f'config.micro_batches={config.micro_batches} micro-batches over the '
        f'{devices} devices of the data and fsdp axes; use a multiple of '
        f'{rows_per_slice}.'
    )
  if config.eval.decode_batch_size % devices:
    raise ValueError(
        f'config.eval.decode_batch_size={config.eval.decode_batch_size} is '
        f'not divisible by the {devices} devices of the data and fsdp axes; '
        'use a multiple of the device count.'
    )


_PLACES = ('encoder_self_attention', 'decoder_self_attention',
           'cross_attention')
_SELF_ATTENTION = _PLACES[:2]


def _names_where(predicate) -> str:
  return ', '.join(n for n in attention.names() if predicate(attention.get(n)))


def _check_attention(model: ml_collections.ConfigDict) -> None:
  """Each place's mechanism exists and can do what the place needs."""
  positions.check_scheme(model.position_scheme)
  for place in _PLACES:
    name = model[place] or model.attention
    field = f'config.model.{place if model[place] else "attention"}'
    cls = attention.get(name)  # Raises with the valid names.
    if place == 'decoder_self_attention' and not cls.can_be_causal:
      raise ValueError(
          f'{field}={name!r} cannot be causal, so it cannot be the decoder '
          'self-attention; choose one of: '
          f'{_names_where(lambda c: c.can_be_causal)} (or set '
          'config.model.decoder_self_attention to keep it elsewhere).'
      )
    if (place in _SELF_ATTENTION
        and model.position_scheme in positions.SCORE_BIAS_SCHEMES
        and not cls.forms_scores):
      raise ValueError(
          f'config.model.position_scheme={model.position_scheme!r} adds a '
          f'bias to attention scores, but {field}={name!r} (the '
          f'{place.replace("_", " ")}) never forms scores; use one of: '
          f'{_names_where(lambda c: c.forms_scores)}, or a position scheme '
          f'among: {", ".join(positions.EMBEDDING_SCHEMES + ("rope",))}.'
      )
  if model.implementation not in kernels.IMPLEMENTATIONS:
    raise ValueError(
        f'config.model.implementation={model.implementation!r}; valid '
        f'choices are: {", ".join(kernels.IMPLEMENTATIONS)}.'
    )
  kv_heads = model.num_kv_heads
  if kv_heads < 0 or (kv_heads and model.num_heads % kv_heads):
    raise ValueError(
        f'config.model.num_kv_heads={kv_heads} must divide '
        f'config.model.num_heads={model.num_heads} (0 means num_heads, 1 is '
        'multi-query attention).'
    )
  if model.position_scheme == 'rope' and (model.qkv_dim // model.num_heads) % 2:
    raise ValueError(
        'config.model.position_scheme=\'rope\' rotates channel pairs, but the '
        f'head dimension qkv_dim/num_heads={model.qkv_dim // model.num_heads} '
        'is odd; choose qkv_dim and num_heads giving an even head dimension.'
    )
  if (model.position_scheme == 'relative_bias'
      and model.relative_max_distance <= model.relative_num_buckets // 2):
    raise ValueError(
        f'config.model.relative_max_distance={model.relative_max_distance} '
        'must exceed half of config.model.relative_num_buckets='
        f'{model.relative_num_buckets}, or the logarithmic buckets are empty.'
    )


def transformer_config(
    config: ml_collections.ConfigDict, vocab_size: int
) -> TransformerConfig:
  """The training-mode model hyper-parameters of an experiment config.

  Every field of `config.model` is a `TransformerConfig` field of the same
  name; the vocabulary size and maximum length come from the data.
  """
  fields = {field.name for field in dataclasses.fields(TransformerConfig)}
  model = config.model.to_dict()
  unknown = sorted(set(model) - fields)
  if unknown:
    raise ValueError(
        f'config.model has fields the model does not know: {unknown}; '
        f'valid fields are: {", ".join(sorted(fields))}.'
    )
  model.update(
      dtype=_DTYPES[model['dtype']],
      **{place: model.get(place) or None for place in _PLACES},
  )
  return TransformerConfig(
      vocab_size=vocab_size,
      max_len=max(config.data.max_len, config.eval.max_decode_len),
      **model,
  )
