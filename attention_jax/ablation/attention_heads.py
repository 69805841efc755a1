"""The report's attention-head section, from summaries the points hold.

A point holds them once `python launch.py --mode=attention_stats
--workdir=POINT_DIR` has run (attention_jax/maps/split_stats.py writes
POINT_DIR/attention_stats/test.json); the report never loads a model. Per
variant, each map's statistics are averaged over its heads and the seeds
that have them (the table), and one figure shows every head (a panel per
statistic, maps down, heads across).
"""

import json
import math
import os

import numpy as np

from attention_jax.ablation import plots
from attention_jax.maps import summaries

SPLIT = 'test'


def read_point(point_dir: str) -> dict | None:
  """The point's attention_stats/test.json, or None if it has none."""
  path = os.path.join(point_dir, 'attention_stats', f'{SPLIT}.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _by_map_and_head(seeds: list[dict]) -> dict[str, dict[int, dict]]:
  """{map: {head: {statistic: mean over seeds}}}."""
  values = {}
  for stats in seeds:
    for row in stats['heads']:
      per_head = values.setdefault(row['map'], {}).setdefault(row['head'], {})
      for statistic in summaries.STATISTICS:
        if not math.isnan(row[statistic]):
          per_head.setdefault(statistic, []).append(row[statistic])
  return {name: {head: {s: float(np.mean(v)) for s, v in stats.items()}
                 for head, stats in heads.items()}
          for name, heads in values.items()}


def table(variants: dict[str, list[dict]]) -> str:
  """A markdown table: one row per variant and map, heads averaged."""
  lines = ['| variant | map | mechanism | seeds | entropy (nats) | '
           'mean distance | first-key share | last-key share |',
           '|---|---|---|---|---|---|---|---|']
  for variant, seeds in variants.items():
    mechanisms = seeds[0]['mechanisms']
    for name, heads in sorted(_by_map_and_head(seeds).items()):
      cells = [np.mean([h[s] for h in heads.values() if s in h])
               for s in summaries.STATISTICS]
      lines.append(f'| {variant} | {name} | {mechanisms.get(name, "")} | '
                   f'{len(seeds)} | ' + ' | '.join(f'{c:.2f}' for c in cells)
                   + ' |')
    for name, mechanism in sorted(seeds[0]['without_weights'].items()):
      lines.append(f'| {variant} | {name} | {mechanism} | {len(seeds)} | '
                   'no weights | | | |')
  return '\n'.join(lines)


def plot_variant(path: str, variant: str, seeds: list[dict]) -> bool:
  """Every head's statistics of one variant; False when it has no maps."""
  by_map = _by_map_and_head(seeds)
  if not by_map:
    return False
  names = sorted(by_map)
  num_heads = 1 + max(max(heads) for heads in by_map.values())
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, len(summaries.STATISTICS), squeeze=False,
                           figsize=(3.2 * len(summaries.STATISTICS),
                                    1.0 + 0.35 * len(names)))
  for ax, statistic in zip(axes[0], summaries.STATISTICS):
    grid = np.full((len(names), num_heads), np.nan)
    for row, name in enumerate(names):
      for head, stats in by_map[name].items():
        grid[row, head] = stats.get(statistic, np.nan)
    image = ax.imshow(grid, aspect='auto', cmap='viridis')
    fig.colorbar(image, ax=ax)
    ax.set_title(statistic, fontsize=9)
    ax.set_xticks(range(num_heads))
    ax.set_xlabel('head')
    ax.set_yticks(range(len(names)), names if ax is axes[0][0] else [],
                  fontsize=7)
  fig.suptitle(f'{variant}: attention heads on the {SPLIT} split')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


def section(workdir: str, points: list[tuple[str, str]]):
  """The report's lines and figures (title, file name) for the attention
  heads of `points`, (variant, point directory) of the finished points.

  Returns:
    ([], []) when no point holds summaries.
  """
  variants = {}
  for variant, point_dir in points:
    stats = read_point(point_dir)
    if stats is not None:
      variants.setdefault(variant, []).append(stats)
  if not variants:
    return [], []
  figures = []
  for variant, seeds in variants.items():
    name = 'attention_heads_' + variant.replace('/', '_').replace('=', '-')
    if plot_variant(os.path.join(workdir, name + '.png'), variant, seeds):
      figures.append((f'Attention heads of {variant}', name + '.png'))
  sentences = sorted({stats['sentences'] for seeds in variants.values()
                      for stats in seeds})
  lines = [
      '## Attention heads', '', table(variants), '',
      f'Teacher-forced on the first {"/".join(map(str, sentences))} pairs '
      f'of the '
      f'{SPLIT} split (python launch.py --mode=attention_stats '
      '--workdir=POINT_DIR; attention_jax/maps/summaries.py): entropy of '
      'each query\'s weights, mean distance attended in positions, and the '
      'share of weight on the first key and on the last key a query may '
      'see, averaged over queries, then over heads and seeds here; each '
      'variant\'s plot shows every head. Layers whose mechanism forms no '
      'weights say so.', '']
  return lines, figures
