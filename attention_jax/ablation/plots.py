"""The plots of a study report (matplotlib, written as PNG files)."""

import json
import math
import os

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
ATTENTION_BENCHMARK = os.path.join(
    REPO, 'experiments', 'results', 'attention_benchmark', 'attention.json'
)
_ATTENTION_FIELDS = ('attention', 'encoder_self_attention',
                     'decoder_self_attention', 'cross_attention')


def pyplot():
  """matplotlib's pyplot on the file-only backend, imported when first used."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def mechanisms(entries: list[dict], base_config: dict) -> list[str]:
  """Attention mechanisms the study's points use, in first-use order."""
  names = []
  for entry in entries:
    model = dict(base_config.get('model', {}))
    for field, value in entry['overrides'].items():
      if field.startswith('model.'):
        model[field[len('model.'):]] = value
    for field in _ATTENTION_FIELDS:
      if model.get(field):
        # A hybrid stack lists one mechanism per layer.
        names.extend(name.strip() for name in model[field].split(','))
  return list(dict.fromkeys(names))


def valid_loss(path: str, records) -> bool:
  """Validation loss against steps per variant, of report.PointRecords."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  plotted = False
  for variant in dict.fromkeys(r.variant for r in records):
    curves = [dict(r.valid_loss) for r in records
              if r.variant == variant and r.valid_loss]
    if not curves:
      continue
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    if not steps:
      continue
    values = np.array([[c[s] for s in steps] for c in curves])
    mean = values.mean(0)
    line, = ax.plot(steps, mean, marker='.',
                    label=f'{variant} (n={len(curves)})')
    ax.fill_between(steps, values.min(0), values.max(0), alpha=0.2,
                    color=line.get_color())
    plotted = True
  if plotted:
    ax.set_xlabel('training step')
    ax.set_ylabel('validation loss (token NLL)')
    ax.set_title('Validation loss: mean over seeds, band = min to max')
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
  plt.close(fig)
  return plotted


def bleu(path: str, rows: list[dict], baseline: str) -> bool:
  """Mean test BLEU per variant with a standard-deviation bar."""
  return per_variant(path, rows, baseline, 'test_bleu', 'test BLEU')


def per_variant(path: str, rows: list[dict], baseline: str, key: str,
                label: str) -> bool:
  """Bars of rows' `key`_mean per variant, `key`_std as error bars."""
  plt = pyplot()
  rows = [r for r in rows if not math.isnan(r[f'{key}_mean'])]
  if not rows:
    return False
  fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(rows) + 2), 4.5))
  x = np.arange(len(rows))
  ax.bar(
      x, [r[f'{key}_mean'] for r in rows],
      yerr=[0 if math.isnan(r[f'{key}_std']) else r[f'{key}_std']
            for r in rows],
      capsize=4,
      color=['tab:gray' if r['variant'] == baseline else 'tab:blue'
             for r in rows],
  )
  ax.set_xticks(x, [r['variant'] for r in rows], rotation=35, ha='right',
                fontsize=8)
  ax.set_ylabel(label)
  ax.set_title(f'{label.capitalize()}: mean ± std over seeds\n'
               '(grey: baseline)', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def accuracy_by(path: str, records, axis: str) -> bool:
  """Test answer accuracy against `axis` ('length', 'pairs', 'tokens') per
  variant, of report.PointRecords of a diagnostic study."""
  key = f'accuracy_by_{axis}'
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  plotted = False
  for variant in dict.fromkeys(r.variant for r in records):
    curves = [r.results[key] for r in records
              if r.variant == variant and key in r.results]
    if not curves:
      continue
    xs = sorted(set.intersection(*(set(c) for c in curves)), key=int)
    values = np.array([[c[x] for x in xs] for c in curves])
    ax.errorbar([int(x) for x in xs], values.mean(0),
                yerr=values.std(0) if len(curves) > 1 else None,
                marker='o', capsize=3, label=f'{variant} (n={len(curves)})')
    plotted = True
  if plotted:
    ax.set_xscale('log', base=2)
    ax.set_xlabel('sequence length' if axis == 'length' else axis)
    ax.set_ylabel('test answer accuracy')
    ax.set_ylim(0, 1.02)
    ax.set_title(f'Accuracy against {axis}: mean ± std over seeds')
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
  plt.close(fig)
  return plotted


def attention_benchmark(path: str, mechanisms: list[str]) -> str | None:
  """Time and memory of one attention call vs length; returns the setup."""
  if not os.path.exists(ATTENTION_BENCHMARK):
    return None
  with open(ATTENTION_BENCHMARK) as f:
    benchmark = json.load(f)
  rows = [r for r in benchmark['results']
          if r['variant'] in mechanisms and r['status'] == 'ok'
          and r['mode'] == 'forward_backward']
  if not rows:
    return None
  plt = pyplot()
  fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
  for mechanism in mechanisms:
    points = sorted((r['length'], r['seconds'], r['memory_mb'])
                    for r in rows if r['variant'] == mechanism)
    if not points:
      continue
    lengths, seconds, memory = zip(*points)
    time_ax.plot(lengths, seconds, marker='o', label=mechanism)
    memory_ax.plot(lengths, memory, marker='o', label=mechanism)
  for ax, label in ((time_ax, 'seconds per call (forward + backward)'),
                    (memory_ax, 'peak memory of the call, MiB')):
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.set_xlabel('sequence length')
    ax.set_ylabel(label)
    ax.legend(fontsize=7)
  setup = benchmark['setup']
  fig.suptitle(
      'One attention call (experiments/benchmark_attention.py): batch '
      f'{setup["batch"]}, {setup["heads"]} heads x {setup["head_dim"]}, '
      f'{setup["dtype"]}, {setup["cpus"]} CPUs; missing points ran out of '
      'memory or time', fontsize=9,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return json.dumps(setup)
