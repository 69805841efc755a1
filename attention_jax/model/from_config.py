"""Checks an experiment config and turns its model part into a dataclass."""

import jax
import jax.numpy as jnp
import ml_collections

from attention_jax import attention
from attention_jax.model.config import TransformerConfig

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def check_config(config: ml_collections.ConfigDict) -> None:
  """Refuses an inconsistent config before anything is compiled.

  Raises:
    ValueError: naming the offending field and how to fix it.
  """
  model = config.model
  attention.get(model.attention)  # Raises with the valid names.
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
  devices = jax.device_count()
  for field, rows in (('batch_size', config.batch_size),
                      ('eval.decode_batch_size', config.eval.decode_batch_size)):
    if rows % devices:
      raise ValueError(
          f'config.{field}={rows} is not divisible by the {devices} devices '
          'of the data axis; use a multiple of the device count.'
      )


def transformer_config(
    config: ml_collections.ConfigDict, vocab_size: int
) -> TransformerConfig:
  """The training-mode model hyper-parameters of an experiment config."""
  model = config.model
  return TransformerConfig(
      vocab_size=vocab_size,
      emb_dim=model.emb_dim,
      num_heads=model.num_heads,
      num_encoder_layers=model.num_encoder_layers,
      num_decoder_layers=model.num_decoder_layers,
      qkv_dim=model.qkv_dim,
      mlp_dim=model.mlp_dim,
      max_len=max(config.data.max_len, config.eval.max_decode_len),
      dropout_rate=model.dropout_rate,
      attention_dropout_rate=model.attention_dropout_rate,
      pre_layer_norm=model.pre_layer_norm,
      attention=model.attention,
      dtype=_DTYPES[model.dtype],
  )
