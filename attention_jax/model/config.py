"""Hyper-parameters of the Transformer, as one frozen dataclass."""

import dataclasses
from typing import Any

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Everything a Transformer layer or attention module needs to know.

  Evaluation and decoding variants are made with
  `cfg.replace(deterministic=True, decode=True)`.
  """

  vocab_size: int
  emb_dim: int = 512
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  # Total width of queries/keys/values over all heads.
  qkv_dim: int = 512
  mlp_dim: int = 2048
  # Longest sequence the sinusoidal table and decoding cache must cover.
  max_len: int = 256
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  # True: LayerNorm before each sub-layer (stable without long warm-up);
  # False: after the residual sum, as in Vaswani et al. 2017.
  pre_layer_norm: bool = True
  attention: str = 'dot_product'
  dtype: Any = jnp.float32
  deterministic: bool = False
  decode: bool = False

  def replace(self, **changes) -> 'TransformerConfig':
    return dataclasses.replace(self, **changes)

  @property
  def head_dim(self) -> int:
    return self.qkv_dim // self.num_heads
