"""A decoder-only language model from the Transformer's decoder layers.

The diagnostic tasks (attention_jax/diagnostics) need causal self-attention
alone: this is the decoder stack of model/transformer.py with its
cross-attention off, so every causal-capable mechanism of the registry runs
in it through the same frame, named by `decoder_self_attention` (or
`attention`). Token id 0 is padding.
"""

import flax.linen as nn
import jax.numpy as jnp

from attention_jax import partitioning as part
from attention_jax.attention import positions
from attention_jax.model.config import TransformerConfig
from attention_jax.model import tied_logits
from attention_jax.model.transformer import DecoderLayer
from attention_jax.model.transformer import default_positions
from attention_jax.model.transformer import layer_norm


class DecoderOnly(nn.Module):
  """Next-token logits of a causal stack of `cfg.num_decoder_layers`."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, tokens_BxL, segment_ids_BxL=None):
    """Float32 logits [B, L, vocab]; position i sees tokens 0..i only.

    Args:
      tokens_BxL: int32 tokens.
      segment_ids_BxL: int32, 0 at padding; None: `tokens_BxL != 0`.
    """
    cfg = self.cfg
    if segment_ids_BxL is None:
      segment_ids_BxL = (tokens_BxL != 0).astype(jnp.int32)
    positions_BxL = default_positions(tokens_BxL)
    embed = nn.Embed(
        cfg.vocab_size, cfg.emb_dim, dtype=cfg.dtype,
        embedding_init=part.init(
            nn.initializers.normal(stddev=cfg.emb_dim**-0.5), part.VOCAB,
            part.EMBED),
        name='embed',
    )
    x = embed(tokens_BxL) * jnp.sqrt(cfg.emb_dim).astype(cfg.dtype)
    scheme = positions.SCHEMES.get(cfg.position_scheme)(cfg.position_options)
    # None for schemes that act inside attention instead.
    position_embed = scheme.embedding(cfg.emb_dim, cfg.max_len, cfg.dtype)
    if position_embed is not None:
      x += position_embed(positions_BxL).astype(x.dtype)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=cfg.deterministic)
    for i in range(cfg.num_decoder_layers):
      x = DecoderLayer(cfg, i, cross_attend=False, name=f'decoder_{i}')(
          x, None, segment_ids_BxL, None, positions_BxL, None)
    if cfg.pre_layer_norm:
      x = layer_norm(cfg, name='decoder_norm')(x)
    return tied_logits.attend(embed, x).astype(jnp.float32)
