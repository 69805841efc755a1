"""Hyper-parameters of the Transformer, as one frozen dataclass."""

import dataclasses
from typing import Any

import jax.numpy as jnp

from attention_jax.attention import frame

PLACES = ('encoder_self_attention', 'decoder_self_attention',
          'cross_attention')


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Everything a Transformer needs to know; what only one attention
  mechanism needs travels in that mechanism's options.

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
  # Longest sequence the position tables and decoding cache must cover.
  max_len: int = 256
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  # True: LayerNorm before each sub-layer (stable without long warm-up);
  # False: after the residual sum, as in Vaswani et al. 2017.
  pre_layer_norm: bool = True
  # Registry name of the attention mechanism used everywhere, unless a
  # place-specific override below is set. An override is one name for every
  # layer of its stack, or a tuple of one name per layer (a hybrid stack:
  # ('linear', 'linear', 'linear', 'softmax')); the encoder's stack for
  # encoder_self_attention, the decoder's for the other two.
  attention: str = 'softmax'
  encoder_self_attention: str | tuple[str, ...] | None = None
  decoder_self_attention: str | tuple[str, ...] | None = None
  cross_attention: str | tuple[str, ...] | None = None
  # (name, options) of the mechanisms in use; a mechanism not listed runs
  # with its default options.
  attention_options: tuple[tuple[str, Any], ...] = ()
  # Key/value heads for grouped-query attention; 0 means num_heads (plain
  # multi-head), 1 is multi-query.
  num_kv_heads: int = 0
  # Registry name of the position scheme (attention/positions.py), and its
  # options (None: the defaults).
  position_scheme: str = 'sinusoidal'
  position_options: Any = None
  # Fused kernel for mechanisms that have one: 'auto', 'xla', 'cudnn' (GPU)
  # or 'pallas' (TPU); unsupported choices fall back to 'xla' with one log
  # line.
  implementation: str = 'auto'
  # Normalisation of queries and keys ('none', 'rms', 'l2'), the initial
  # gain of 'l2', and the attention sink ('none', 'learned', 'zero'); see
  # attention/frame.py AttentionConfig.
  qk_norm: str = 'none'
  qk_norm_gain: float = 12.0
  attention_sink: str = 'none'
  dtype: Any = jnp.float32
  deterministic: bool = False
  decode: bool = False

  def replace(self, **changes) -> 'TransformerConfig':
    return dataclasses.replace(self, **changes)

  def attention_for(self, place: str, layer_index: int = 0) -> str:
    """Mechanism name for 'encoder_self_attention', 'decoder_self_attention'
    or 'cross_attention' in the stack's layer `layer_index` (from 0)."""
    names = getattr(self, place) or self.attention
    if isinstance(names, str):
      return names
    if len(names) != self.num_layers(place):
      raise ValueError(
          f'{place}={names} names {len(names)} layers, but the stack has '
          f'{self.num_layers(place)}.')
    return names[layer_index]

  def num_layers(self, place: str) -> int:
    """Layers of the stack `place` is in."""
    if place == 'encoder_self_attention':
      return self.num_encoder_layers
    return self.num_decoder_layers

  def attention_config(self, place: str,
                       layer_index: int = 0) -> frame.AttentionConfig:
    """The attention layer's hyper-parameters at `place` (see PLACES) in the
    stack's layer `layer_index`."""
    mechanism = self.attention_for(place, layer_index)
    return frame.AttentionConfig(
        mechanism=mechanism,
        options=dict(self.attention_options).get(mechanism),
        num_heads=self.num_heads,
        head_dim=self.head_dim,
        num_kv_heads=self.num_kv_heads,
        position_scheme=self.position_scheme,
        position_options=self.position_options,
        dropout_rate=self.attention_dropout_rate,
        implementation=self.implementation,
        qk_norm=self.qk_norm,
        qk_norm_gain=self.qk_norm_gain,
        attention_sink=self.attention_sink,
        layer_index=layer_index,
        dtype=self.dtype,
        deterministic=self.deterministic,
        # The encoder runs once over the whole source, also in decoding.
        decode=self.decode and place != 'encoder_self_attention',
    )

  @property
  def head_dim(self) -> int:
    return self.qkv_dim // self.num_heads
