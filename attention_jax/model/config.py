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
  # Registry name of the attention mechanism used everywhere, unless a
  # place-specific override below is set.
  attention: str = 'dot_product'
  encoder_self_attention: str | None = None
  decoder_self_attention: str | None = None
  cross_attention: str | None = None
  # Key/value heads for grouped-query attention; 0 means num_heads (plain
  # multi-head), 1 is multi-query.
  num_kv_heads: int = 0
  # Keys within this distance of the query, for local attention.
  window_size: int = 64
  # Random features of Performer FAVOR+.
  num_random_features: int = 256
  # Block length of chunked exact attention and of the running sums of
  # kernelised (linear, Performer) attention.
  chunk_size: int = 512
  # 'sinusoidal' or 'learned' add to the embeddings; 'rope', 'alibi' and
  # 'relative_bias' act inside self-attention.
  position_scheme: str = 'sinusoidal'
  # T5-style relative position buckets.
  relative_num_buckets: int = 32
  relative_max_distance: int = 128
  # Kernel for softmax attention: 'auto', 'xla', 'cudnn' (GPU) or 'pallas'
  # (TPU); unsupported choices fall back to 'xla' with one log line.
  implementation: str = 'auto'
  dtype: Any = jnp.float32
  deterministic: bool = False
  decode: bool = False

  def replace(self, **changes) -> 'TransformerConfig':
    return dataclasses.replace(self, **changes)

  def attention_for(self, place: str) -> str:
    """Mechanism name for 'encoder_self_attention', 'decoder_self_attention'
    or 'cross_attention'."""
    return getattr(self, place) or self.attention

  @property
  def head_dim(self) -> int:
    return self.qkv_dim // self.num_heads
