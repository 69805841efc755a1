"""Per-head summaries of attention maps (see capture.py for the maps).

For each query the weights over its keys are read as a distribution
p_j = |w_j| / sum_k |w_k|: softmax rows already are one; softpick's and
sigmoid's rows need not sum to one, and differential attention's may hold
negative weights, so magnitudes are what is compared. A row whose weights
are all zero (stick-breaking's first query, which sees no key before it)
has no distribution and is left out. Per query:

  entropy_nats      -sum_j p_j log p_j (log K for a uniform row over K keys)
  mean_distance     sum_j p_j |i - j|, positions between query i and key j
                    (for cross-attention, target index against source index)
  first_key_share   p_0, the weight on the first key (BOS in decoder
                    self-attention; a sink when large everywhere)
  last_key_share    p on the last key the query may see: the query itself
                    in decoder self-attention, EOS elsewhere

A head's summary is the mean over every query of every sentence.
"""

from typing import Iterable

import numpy as np

STATISTICS = ('entropy_nats', 'mean_distance', 'first_key_share',
              'last_key_share')


def is_causal(map_name: str) -> bool:
  """Whether the map is decoder self-attention (see capture.py's names)."""
  return map_name.startswith('decoder/') and map_name.endswith('/self')


def query_statistics(weights_HxQxK: np.ndarray, causal: bool):
  """Each statistic per head and query.

  Args:
    weights_HxQxK: one sentence's map, cropped to real tokens.
    causal: query i sees keys 0..i (decoder self-attention); otherwise
      every key.

  Returns:
    ({statistic: float64 [H, Q]}, boolean [H, Q]: rows with a distribution).
  """
  magnitude = np.abs(np.asarray(weights_HxQxK, np.float64))
  total_HxQ = magnitude.sum(-1)
  has_weights = total_HxQ > 0
  p = magnitude / np.where(has_weights, total_HxQ, 1.0)[..., None]
  num_q, num_k = p.shape[1:]
  log_p = np.log(np.where(p > 0, p, 1.0))
  distance_QxK = np.abs(np.arange(num_q)[:, None] - np.arange(num_k)[None])
  last_Q = np.arange(num_q) if causal else np.full(num_q, num_k - 1)
  stats = {
      'entropy_nats': -(p * log_p).sum(-1),
      'mean_distance': (p * distance_QxK[None]).sum(-1),
      'first_key_share': p[..., 0],
      'last_key_share': np.take_along_axis(
          p, np.broadcast_to(last_Q[None, :, None], p.shape[:2] + (1,)),
          -1)[..., 0],
  }
  return stats, has_weights


def head_summaries(
    sentences: Iterable[dict[str, np.ndarray]]) -> list[dict[str, object]]:
  """Mean statistics per map and head over sentences' maps.

  Args:
    sentences: per sentence, {map name: [H, Q, K]} (capture.sentence_maps).

  Returns:
    One row per map and head, in map-name order: {'map', 'head',
    'queries' (rows averaged), and each of STATISTICS}.
  """
  sums, counts = {}, {}
  for maps in sentences:
    for name, weights in maps.items():
      stats, valid_HxQ = query_statistics(weights, is_causal(name))
      num_heads = weights.shape[0]
      sums.setdefault(name, {s: np.zeros(num_heads) for s in STATISTICS})
      counts[name] = counts.get(name, 0) + valid_HxQ.sum(-1)
      for statistic, value_HxQ in stats.items():
        sums[name][statistic] += np.where(valid_HxQ, value_HxQ, 0.0).sum(-1)
  rows = []
  for name in sorted(sums):
    for head, queries in enumerate(counts[name]):
      row = {'map': name, 'head': head, 'queries': int(queries)}
      for statistic in STATISTICS:
        row[statistic] = (float(sums[name][statistic][head] / queries)
                          if queries else float('nan'))
      rows.append(row)
  return rows
