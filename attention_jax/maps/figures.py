"""Heatmaps of attention maps, labelled with sentencepiece pieces."""

from typing import Sequence

import matplotlib

matplotlib.use('Agg')  # Files only; no display is assumed.
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np

# Heads side by side up to this many per row of panels.
_HEADS_PER_ROW = 4


def _label(ax, weights_QxK, query_pieces, key_pieces, title):
  ax.imshow(weights_QxK, cmap='viridis', aspect='auto',
            interpolation='nearest')
  ax.set_xticks(range(len(key_pieces)), key_pieces, rotation=90, fontsize=7)
  ax.set_yticks(range(len(query_pieces)), query_pieces, fontsize=7)
  ax.set_title(title, fontsize=9)


def write_heads(path: str, weights_HxQxK: np.ndarray,
                query_pieces: Sequence[str], key_pieces: Sequence[str],
                title: str) -> None:
  """One panel per head of one layer's map, queries down, keys across.

  Args:
    path: the PNG to write.
    weights_HxQxK: the map, cropped to real tokens.
    query_pieces: Q labels.
    key_pieces: K labels.
    title: the figure's title (map name and mechanism).
  """
  num_heads = weights_HxQxK.shape[0]
  cols = min(num_heads, _HEADS_PER_ROW)
  rows = -(-num_heads // cols)
  size = 1.2 + 0.18 * max(len(query_pieces), len(key_pieces))
  fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size),
                           squeeze=False)
  for head, ax in enumerate(axes.flat):
    if head < num_heads:
      _label(ax, weights_HxQxK[head], query_pieces, key_pieces,
             f'head {head}')
    else:
      ax.axis('off')
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_alignment(path: str, cross_HxTxS: np.ndarray,
                    target_pieces: Sequence[str],
                    source_pieces: Sequence[str], title: str) -> None:
  """The classic alignment figure (Bahdanau et al., 2015, Fig. 3): the last
  decoder layer's cross-attention averaged over heads, greyscale, source
  pieces across the top and target pieces down the side."""
  size = max(4.0, 1.5 + 0.25 * max(len(target_pieces), len(source_pieces)))
  fig, ax = plt.subplots(figsize=(size, size))
  ax.imshow(cross_HxTxS.mean(0), cmap='gray', aspect='equal',
            interpolation='nearest', vmin=0.0)
  ax.xaxis.tick_top()
  ax.set_xticks(range(len(source_pieces)), source_pieces, rotation=90)
  ax.set_yticks(range(len(target_pieces)), target_pieces)
  ax.set_title(title, pad=40, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
