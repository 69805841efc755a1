"""Attention weights of a teacher-forced pass, as the model's frames sow them.

Every attention frame whose mechanism has `inspectable_weights` sows its
weight matrix into the 'intermediates' collection when that collection is
mutable (attention/frame.py); nothing here recomputes attention. Maps are
named by place and layer:

  encoder/layer_{i}/self     H x S x S   source queries, source keys
  decoder/layer_{i}/self     H x T x T   target queries, decoder-input keys
  decoder/layer_{i}/cross    H x T x S   target queries, source keys

S counts the source pieces and EOS, T the target pieces and EOS. Query t of
the decoder is the step that outputs target piece t; its decoder input is
piece t - 1 (BOS, id 0, at t = 0), so decoder self-attention's key j is the
input BOS-or-piece j - 1.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import attention
from attention_jax.model.config import TransformerConfig
from attention_jax.model.transformer import Transformer

# (config place, stack, frame module name, map suffix) of each place.
_PLACES = (
    ('encoder_self_attention', 'encoder', 'self_attention', 'self'),
    ('decoder_self_attention', 'decoder', 'self_attention', 'self'),
    ('cross_attention', 'decoder', 'cross_attention', 'cross'),
)


def map_names(cfg: TransformerConfig) -> dict[str, str]:
  """{map name: mechanism name} of every attention layer of the model."""
  names = {}
  for place, stack, _, suffix in _PLACES:
    for i in range(cfg.num_layers(place)):
      names[f'{stack}/layer_{i}/{suffix}'] = cfg.attention_for(place, i)
  return names


def without_weights(cfg: TransformerConfig) -> dict[str, str]:
  """{map name: mechanism} of the layers whose mechanism forms no weights."""
  return {name: mechanism for name, mechanism in map_names(cfg).items()
          if not attention.get(mechanism).capabilities.inspectable_weights}


def _sown(cfg: TransformerConfig, intermediates) -> dict[str, jax.Array]:
  found = {}
  for place, stack, module, suffix in _PLACES:
    for i in range(cfg.num_layers(place)):
      layer = intermediates.get(f'{stack}_{i}', {}).get(module, {})
      if 'attention_weights' in layer:
        (weights,) = layer['attention_weights']
        found[f'{stack}/layer_{i}/{suffix}'] = weights
  return found


def batch_weights(cfg: TransformerConfig, params, inputs_BxS, targets_BxT):
  """Weights of every inspectable layer for a padded batch.

  Args:
    cfg: the model's config.
    params: its parameters.
    inputs_BxS: int32 source ids, EOS-terminated, 0-padded.
    targets_BxT: int32 target ids, EOS-terminated, 0-padded.

  Returns:
    {map name: float32 [B, H, Q, K]}, padding included; names of layers
    whose mechanism has no weights are absent.
  """
  model = Transformer(cfg.replace(deterministic=True, decode=False))
  _, state = model.apply({'params': params}, inputs_BxS, targets_BxT,
                         mutable=['intermediates'])
  return _sown(cfg, state['intermediates'])


def sentence_maps(cfg: TransformerConfig, params,
                  sources: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                  batch_size: int = 8) -> list[dict[str, np.ndarray]]:
  """Per sentence, {map name: float32 [H, Q, K]} cropped to real tokens.

  Sentences are padded to the longest of all, in batches of `batch_size`,
  so one compiled pass serves every batch.

  Args:
    cfg: the model's config.
    params: its parameters.
    sources: int32 source ids per sentence, EOS included.
    targets: int32 target ids per sentence, EOS included.
    batch_size: sentences per pass.
  """
  source_len = max(len(s) for s in sources)
  target_len = max(len(t) for t in targets)
  run = jax.jit(lambda p, x, y: batch_weights(cfg, p, x, y))
  out = []
  for start in range(0, len(sources), batch_size):
    rows = range(start, min(start + batch_size, len(sources)))
    x = np.zeros((batch_size, source_len), np.int32)
    y = np.zeros((batch_size, target_len), np.int32)
    for row, index in enumerate(rows):
      x[row, :len(sources[index])] = sources[index]
      y[row, :len(targets[index])] = targets[index]
    weights = jax.device_get(run(params, jnp.asarray(x), jnp.asarray(y)))
    for row, index in enumerate(rows):
      lengths = {'encoder': (len(sources[index]), len(sources[index])),
                 'self': (len(targets[index]), len(targets[index])),
                 'cross': (len(targets[index]), len(sources[index]))}
      maps = {}
      for name, w in weights.items():
        kind = 'encoder' if name.startswith('encoder') else name.split('/')[-1]
        q, k = lengths[kind]
        maps[name] = np.asarray(w[row, :, :q, :k], np.float32)
      out.append(maps)
  return out

