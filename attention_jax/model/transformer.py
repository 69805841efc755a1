"""Transformer encoder-decoder for translation (Vaswani et al., 2017).

Every attention layer is the shared multi-head frame with the mechanism the
config names for its place; the layers here never depend on which one it is. Token id 0 is padding and also
serves as the beginning-of-sentence input of the decoder.
"""

import flax.linen as nn
import jax.numpy as jnp

from attention_jax import partitioning as part
from attention_jax.attention import positions
from attention_jax.attention.frame import MultiHeadAttention
from attention_jax.model.config import TransformerConfig
from attention_jax.model import tied_logits


def shift_right(targets_BxL, segment_ids_BxL=None):
  """Decoder inputs: targets moved one step right, 0 (BOS) at each start."""
  shifted = jnp.pad(targets_BxL, [(0, 0), (1, 0)])[:, :-1]
  if segment_ids_BxL is None:
    return shifted
  # In a packed row, a sentence must not see the previous sentence's end.
  prev_segment = jnp.pad(segment_ids_BxL, [(0, 0), (1, 0)])[:, :-1]
  return jnp.where(prev_segment == segment_ids_BxL, shifted, 0)


def default_positions(tokens_BxL):
  return jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1]), tokens_BxL.shape)


class MlpBlock(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    init = nn.initializers.xavier_uniform()
    y = nn.Dense(
        cfg.mlp_dim,
        dtype=cfg.dtype,
        kernel_init=part.init(init, part.EMBED, part.MLP),
        bias_init=part.init(nn.initializers.zeros, part.MLP),
    )(x)
    y = nn.relu(y)
    y = nn.Dropout(cfg.dropout_rate)(y, deterministic=cfg.deterministic)
    return nn.Dense(
        x.shape[-1],
        dtype=cfg.dtype,
        kernel_init=part.init(init, part.MLP, part.EMBED),
        bias_init=part.init(nn.initializers.zeros, part.EMBED),
    )(y)


def layer_norm(cfg: TransformerConfig, name: str | None = None):
  return nn.LayerNorm(
      dtype=cfg.dtype,
      scale_init=part.init(nn.initializers.ones, part.EMBED),
      bias_init=part.init(nn.initializers.zeros, part.EMBED),
      name=name,
  )


class Residual(nn.Module):
  """Wraps a sub-layer with dropout, residual sum and pre/post LayerNorm."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, sublayer, x, *args):
    cfg = self.cfg
    norm = layer_norm(cfg)
    y = sublayer(norm(x) if cfg.pre_layer_norm else x, *args)
    y = nn.Dropout(cfg.dropout_rate)(y, deterministic=cfg.deterministic)
    return x + y if cfg.pre_layer_norm else norm(x + y)


class EncoderLayer(nn.Module):
  cfg: TransformerConfig
  index: int = 0

  @nn.compact
  def __call__(self, x, segment_ids, positions):
    cfg = self.cfg
    self_attention = MultiHeadAttention(
        cfg.attention_config('encoder_self_attention', self.index), causal=False,
        self_attention=True, name='self_attention',
    )
    x = Residual(cfg, name='attention_block')(
        lambda h: self_attention(
            h, h, segment_ids, segment_ids, positions, positions
        ),
        x,
    )
    return Residual(cfg, name='mlp_block')(MlpBlock(cfg, name='mlp'), x)


class DecoderLayer(nn.Module):
  """Causal self-attention, cross-attention to the encoder, MLP.

  With `cross_attend=False` (a decoder-only language model) the layer has
  no cross-attention and its encoder arguments are None.
  """

  cfg: TransformerConfig
  index: int = 0
  cross_attend: bool = True

  @nn.compact
  def __call__(self, y, encoded, target_segment_ids, source_segment_ids,
               target_positions, source_positions):
    cfg = self.cfg
    self_attention = MultiHeadAttention(
        cfg.attention_config('decoder_self_attention', self.index), causal=True,
        self_attention=True, name='self_attention',
    )
    y = Residual(cfg, name='self_attention_block')(
        lambda h: self_attention(
            h, h, target_segment_ids, target_segment_ids, target_positions,
            target_positions,
        ),
        y,
    )
    if self.cross_attend:
      cross_attention = MultiHeadAttention(
          cfg.attention_config('cross_attention', self.index), causal=False,
          self_attention=False, name='cross_attention',
      )
      y = Residual(cfg, name='cross_attention_block')(
          lambda h: cross_attention(
              h, encoded, target_segment_ids, source_segment_ids,
              target_positions, source_positions,
          ),
          y,
      )
    return Residual(cfg, name='mlp_block')(MlpBlock(cfg, name='mlp'), y)


class DecodePositions(nn.Module):
  """Position of the token fed at each incremental decoding step."""

  @nn.compact
  def __call__(self, tokens_BxL):
    is_initialized = self.has_variable('cache', 'position')
    position = self.variable(
        'cache', 'position', lambda: jnp.array(0, jnp.int32)
    )
    if not is_initialized:
      return default_positions(tokens_BxL)
    step = position.value
    position.value = step + 1
    return jnp.full(tokens_BxL.shape, step)


class Transformer(nn.Module):
  """Encoder-decoder with embeddings shared by source, target and output."""

  cfg: TransformerConfig

  def setup(self):
    cfg = self.cfg
    self.embed = nn.Embed(
        cfg.vocab_size,
        cfg.emb_dim,
        dtype=cfg.dtype,
        embedding_init=part.init(
            nn.initializers.normal(stddev=cfg.emb_dim**-0.5), part.VOCAB,
            part.EMBED,
        ),
    )
    scheme = positions.SCHEMES.get(cfg.position_scheme)(cfg.position_options)
    # None for schemes that act inside attention instead.
    self.position_embed = scheme.embedding(cfg.emb_dim, cfg.max_len,
                                           cfg.dtype)
    self.encoder_layers = [
        EncoderLayer(cfg, i, name=f'encoder_{i}')
        for i in range(cfg.num_encoder_layers)
    ]
    self.decoder_layers = [
        DecoderLayer(cfg, i, name=f'decoder_{i}')
        for i in range(cfg.num_decoder_layers)
    ]
    self.decode_positions = DecodePositions(name='decode_positions')
    self.encoder_dropout = nn.Dropout(cfg.dropout_rate)
    self.decoder_dropout = nn.Dropout(cfg.dropout_rate)
    if cfg.pre_layer_norm:
      self.encoder_norm = layer_norm(cfg)
      self.decoder_norm = layer_norm(cfg)

  def _embed(self, tokens_BxL, positions_BxL, dropout):
    x = self.embed(tokens_BxL) * jnp.sqrt(self.cfg.emb_dim).astype(
        self.cfg.dtype
    )
    if self.position_embed is not None:
      x += self.position_embed(positions_BxL).astype(x.dtype)
    return dropout(x, deterministic=self.cfg.deterministic)

  def encode(self, inputs, inputs_segmentation=None, inputs_position=None):
    """Encodes source tokens [B, S] into [B, S, emb_dim]."""
    if inputs_segmentation is None:
      inputs_segmentation = (inputs != 0).astype(jnp.int32)
    if inputs_position is None:
      inputs_position = default_positions(inputs)
    x = self._embed(inputs, inputs_position, self.encoder_dropout)
    for layer in self.encoder_layers:
      x = layer(x, inputs_segmentation, inputs_position)
    return self.encoder_norm(x) if self.cfg.pre_layer_norm else x

  def decode(
      self,
      encoded,
      inputs_segmentation,
      targets,
      targets_segmentation=None,
      targets_position=None,
      inputs_position=None,
  ):
    """Returns float32 logits [B, T, vocab] for the next token at each step.

    In training `targets` are the gold outputs and are shifted right here.
    With `cfg.decode` they are the tokens fed at this step, one per row
    (or the full-length dummy of the cache-creating call).
    """
    cfg = self.cfg
    if cfg.decode:
      decoder_inputs = targets
      targets_position = self.decode_positions(targets)
    else:
      if targets_segmentation is None:
        targets_segmentation = (targets != 0).astype(jnp.int32)
        decoder_inputs = shift_right(targets)
      else:
        decoder_inputs = shift_right(targets, targets_segmentation)
      if targets_position is None:
        targets_position = default_positions(targets)
    y = self._embed(decoder_inputs, targets_position, self.decoder_dropout)
    if inputs_position is None:
      inputs_position = default_positions(inputs_segmentation)
    for layer in self.decoder_layers:
      y = layer(
          y, encoded, targets_segmentation, inputs_segmentation,
          targets_position, inputs_position,
      )
    if cfg.pre_layer_norm:
      y = self.decoder_norm(y)
    return tied_logits.attend(self.embed, y).astype(jnp.float32)

  def __call__(
      self,
      inputs,
      targets,
      inputs_segmentation=None,
      targets_segmentation=None,
      inputs_position=None,
      targets_position=None,
  ):
    """Teacher-forced logits [B, T, vocab] for (possibly packed) pairs."""
    if inputs_segmentation is None:
      inputs_segmentation = (inputs != 0).astype(jnp.int32)
    encoded = self.encode(inputs, inputs_segmentation, inputs_position)
    return self.decode(
        encoded,
        inputs_segmentation,
        targets,
        targets_segmentation,
        targets_position,
        inputs_position,
    )
