"""Refuses an inconsistent experiment config before anything is compiled.

Every check names the offending field and how to fix it. Mechanism and
position-scheme requirements are read from their declared capabilities
(attention/base.py), never from lists kept here.
"""

import jax
import ml_collections

from attention_jax import attention
from attention_jax import sharding
from attention_jax.attention import frame
from attention_jax.attention import fused
from attention_jax.attention import positions
from attention_jax.data import corpora
from attention_jax.model import from_config
from attention_jax.model.config import PLACES


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the offending field and how to fix it."""
  corpora.check_dataset(config.data)
  model = config.model
  from_config.check_not_legacy(model, 'This config')
  _check_attention(model)
  for width in ('emb_dim', 'qkv_dim'):
    if model[width] % model.num_heads:
      raise ValueError(
          f'config.model.{width}={model[width]} is not divisible by '
          f'config.model.num_heads={model.num_heads}; choose a head count '
          'that divides it.'
      )
  if model.dtype not in from_config.DTYPES:
    raise ValueError(
        f'config.model.dtype={model.dtype!r}; valid choices are: '
        f'{", ".join(from_config.DTYPES)}.'
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


def _names_where(predicate) -> str:
  return ', '.join(n for n in attention.names() if predicate(attention.get(n)))


def _check_attention(model: ml_collections.ConfigDict) -> None:
  """Each place's mechanism exists and can do what the place needs."""
  try:
    scheme = positions.SCHEMES.get(model.position_scheme)
  except ValueError as e:
    raise ValueError(f'config.model.position_scheme: {e}') from None
  for name, values in model.options.items():
    attention.MECHANISMS.options(name, values)
  for name, values in model.position_options.items():
    positions.SCHEMES.options(name, values)
  for place in PLACES:
    name = model[place] or model.attention
    field = f'config.model.{place if model[place] else "attention"}'
    try:
      cls = attention.get(name)
    except ValueError as e:
      raise ValueError(f'{field}: {e}') from None
    causal = place == 'decoder_self_attention'
    self_attention = place != 'cross_attention'
    if causal and not cls.capabilities.causal:
      raise ValueError(
          f'{field}={name!r} cannot be causal, so it cannot be the decoder '
          'self-attention; choose one of: '
          f'{_names_where(lambda c: c.capabilities.causal)} (or set '
          'config.model.decoder_self_attention to keep it elsewhere).'
      )
    try:
      frame.check_place(cls, scheme, causal=causal,
                        self_attention=self_attention)
    except ValueError:
      honouring = _names_where(
          lambda c: scheme.name in c.capabilities.position_schemes)
      raise ValueError(
          f'config.model.position_scheme={scheme.name!r} acts inside '
          f'self-attention ({scheme.acts_in}), but {field}={name!r} (the '
          f'{place.replace("_", " ")}) does not honour it, so the model '
          f'would be blind to positions there; use one of: {honouring}, or '
          'a scheme added to the embeddings: '
          f'{_names_where_scheme(positions.EMBEDDING)}.'
      ) from None
  _check_implementation(model)
  kv_heads = model.num_kv_heads
  if kv_heads < 0 or (kv_heads and model.num_heads % kv_heads):
    raise ValueError(
        f'config.model.num_kv_heads={kv_heads} must divide '
        f'config.model.num_heads={model.num_heads} (0 means num_heads, 1 is '
        'multi-query attention).'
    )
  try:
    scheme().check(model.qkv_dim // model.num_heads)
  except ValueError as e:
    raise ValueError(f'config.model.{e}') from None


def _names_where_scheme(acts_in: str) -> str:
  return ', '.join(n for n in positions.SCHEMES.names()
                   if positions.SCHEMES.get(n).acts_in == acts_in)


def _check_implementation(model: ml_collections.ConfigDict) -> None:
  """A fused kernel asked for by name is one some mechanism in use has."""
  requested = model.implementation
  if requested not in fused.IMPLEMENTATIONS:
    raise ValueError(
        f'config.model.implementation={requested!r}; valid choices are: '
        f'{", ".join(fused.IMPLEMENTATIONS)}.'
    )
  if requested in ('auto', 'xla'):
    return
  used = from_config.mechanisms_in_use(model)
  if not any(requested in attention.get(n).capabilities.fused_kernels
             for n in used):
    raise ValueError(
        f'config.model.implementation={requested!r} is a fused kernel of '
        f'{_names_where(lambda c: requested in c.capabilities.fused_kernels)}'
        f', none of which this model uses ({", ".join(used)}); use \'auto\' '
        "or 'xla'."
    )
