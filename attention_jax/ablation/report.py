"""The report of a study workdir: report.md, results.csv, summary.csv, plots.

  python -m attention_jax.ablation.report --workdir=DIR

reads DIR/study.json and whatever its points have written, so it runs on a
finished, a partial or a shared multi-machine workdir alike. It imports no
JAX. Points are compared by the figure their task reports (ablation/
headline.py): corpus BLEU over test sentences for translation, answer
accuracy over test sequences for the diagnostic tasks.
"""

import csv
import dataclasses
import io
import math
import os
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

from attention_jax import run_records
from attention_jax.ablation import attention_heads
from attention_jax.ablation import headline as headline_lib
from attention_jax.ablation import plots
from attention_jax.ablation import report_text
from attention_jax.ablation import runner
from attention_jax.ablation import significance
from attention_jax.ablation import study as study_lib
from attention_jax.diagnostics import answers



@dataclasses.dataclass
class PointRecord:
  """What one point left in its workdir."""
  name: str
  variant: str
  seed: int
  status: str
  results: dict[str, Any]
  error: str
  wall_seconds: float
  valid_loss: list[tuple[int, float]]
  # Per test item, the statistics its figure is summed from: BLEU's
  # [sentences, significance.NUM_STATS], or [sequences, 2] answers right
  # and asked; and what each item was scored against: the reference
  # sentence, or a diagnostic sequence's setting. None where the point left
  # neither translations/ nor answers/.
  test_stats: np.ndarray | None
  test_items: list[str] | None
  # The point directory of another study this one was copied from, if any.
  reused_from: str
  # The code commit of the attempt that finished it (None: unfinished, or
  # finished before commits were recorded per attempt).
  commit: str | None = None


def _read_lines(path: str) -> list[str] | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return [line.rstrip('\n') for line in f]


def read_point(workdir: str, entry: dict) -> PointRecord:
  point = study_lib.Point(entry['variant'], entry['seed'], entry['overrides'])
  path = runner.point_dir(workdir, point)
  state = runner.status(path)
  results, error = {}, ''
  if state == runner.DONE:
    results = runner.read_results(path)
  elif state == runner.FAILED:
    error = runner.read_error(path)
  elif os.path.exists(os.path.join(path, 'results.json')):
    try:
      runner.read_results(path)
    except run_records.DamagedRecordError as e:
      error = str(e)
  wall = runner.wall_seconds(path)
  valid_loss = [
      (r['step'], r['valid/loss'])
      for r in run_records.read_jsonl(os.path.join(path, 'metrics.jsonl'))
      if 'valid/loss' in r
  ]
  if state == runner.DONE and (
      not valid_loss or valid_loss[-1][0] != results['steps']):
    # The final evaluation's loss ends the curve.
    valid_loss.append((results['steps'], results['eval_loss']))
  stats, items = None, None
  hypotheses = _read_lines(os.path.join(path, 'translations', 'test.txt'))
  references = _read_lines(
      os.path.join(path, 'translations', 'test_references.txt')
  )
  answers_path = os.path.join(path, 'answers', 'test.csv')
  if state == runner.DONE and hypotheses is not None and references:
    stats, items = significance.sentence_stats(hypotheses, references), (
        references)
  elif state == runner.DONE and os.path.exists(answers_path):
    items, stats = answers.read(answers_path)
  reused_from = ''
  if os.path.exists(os.path.join(path, 'reused.json')):
    try:
      reused_from = run_records.read_json(
          os.path.join(path, 'reused.json'), '')['source']
    except run_records.DamagedRecordError:
      reused_from = '(reused.json damaged)'
  return PointRecord(point.name, point.variant, point.seed, state, results,
                     error, wall, valid_loss, stats, items, reused_from,
                     runner.finishing_commit(path))


def summarise(records: list[PointRecord], baseline: str,
              num_samples: int = 1000,
              figure: headline_lib.Headline = headline_lib.BLEU,
              ) -> list[dict[str, Any]]:
  """One row per variant, in sweep order; the difference to the baseline,
  its interval and p-values, and the gap to the best are of `figure`."""
  variants = list(dict.fromkeys(r.variant for r in records))
  by_variant = {v: [r for r in records if r.variant == v] for v in variants}

  def stats_of(variant):
    """[seeds, items, stats] of every finished seed; None where a finished
    seed left no per-item record (then its mean and the paired difference
    would cover different seeds) or none finished."""
    done = [r for r in by_variant[variant] if r.status == runner.DONE]
    if not done or any(r.test_stats is None for r in done):
      return None
    return np.stack([r.test_stats for r in done])

  def unscored(variant):
    return [r.name for r in by_variant[variant]
            if r.status == runner.DONE and r.test_stats is None]

  test_sets = {tuple(r.test_items) for r in records
               if r.test_items is not None}
  if len(test_sets) > 1:
    raise ValueError(
        'The finished points were tested on different test sets (their '
        'translations/test_references.txt, or the settings of their '
        'answers/test.csv, differ); a paired comparison needs one test set. '
        'Rerun the odd points with the same data config.'
    )
  baseline_stats = stats_of(baseline)
  rows = []
  for variant in variants:
    done = [r for r in by_variant[variant] if r.status == runner.DONE]
    # Diagnostic tasks score answer accuracy, not BLEU.
    bleu = [r.results['test_bleu'] for r in done if 'test_bleu' in r.results]
    accuracy = [r.results['test_accuracy'] for r in done
                if 'test_accuracy' in r.results]
    sequences_right = [r.results['test_sequence_accuracy'] for r in done
                       if 'test_sequence_accuracy' in r.results]
    # Results written before chrF was scored lack it.
    chrf = [r.results['test_chrf'] for r in done if 'test_chrf' in r.results]
    row = {
        'variant': variant,
        'finished': len(done),
        'points': len(by_variant[variant]),
        'test_bleu_mean': report_text.mean(bleu),
        'test_bleu_std': report_text.sample_std(bleu),
        'test_chrf_mean': report_text.mean(chrf),
        'test_chrf_std': report_text.sample_std(chrf),
        'test_accuracy_mean': report_text.mean(accuracy),
        'test_accuracy_std': report_text.sample_std(accuracy),
        'test_sequence_accuracy_mean': report_text.mean(sequences_right),
        'bleu_signature': report_text.signatures(
            done, 'test_bleu_signature'),
        'chrf_signature': report_text.signatures(
            done, 'test_chrf_signature'),
        'valid_loss': report_text.mean([r.results['eval_loss'] for r in done]),
        'steps': report_text.mean([r.results['steps'] for r in done]),
        'num_params': report_text.mean([r.results['num_params'] for r in done]),
        'train_tokens_per_sec': report_text.mean(
            [r.results.get('train_tokens_per_sec') for r in done]),
        'peak_memory_mib': report_text.mean(
            [r.results.get('peak_memory_bytes', math.nan) / 2**20
             for r in done]),
        'decode_tokens_per_sec': report_text.mean(
            [r.results.get('test_decode_tokens_per_sec') for r in done]),
        'wall_seconds': report_text.mean([r.wall_seconds for r in done]),
        'difference': math.nan, 'ci_low': math.nan, 'ci_high': math.nan,
        'p_value': math.nan, 'seeds_ci_low': math.nan,
        'seeds_ci_high': math.nan, 'seeds_p_value': math.nan,
        'seeds_not_resampled': '',
        'not_compared': '',
    }
    variant_stats = stats_of(variant)
    missing = unscored(variant) + (
        unscored(baseline) if variant != baseline else [])
    if missing and variant != baseline:
      record = ('answers/test.csv' if figure is headline_lib.ACCURACY
                else 'translations/test.txt')
      row['not_compared'] = (
          f'no {record} from {", ".join(missing)} (finished before it was '
          'written; delete its point directory and rerun the study to train '
          'it again)')
    if (variant != baseline and variant_stats is not None
        and baseline_stats is not None):
      comparison = significance.paired_bootstrap(
          baseline_stats, variant_stats, num_samples, score=figure.score
      )
      row.update({k: v for k, v in dataclasses.asdict(comparison).items()
                  if k in row})
      row['seeds_not_resampled'] = _too_few_seeds(
          len(baseline_stats), len(variant_stats))
    rows.append(row)
  mean = f'{figure.key}_mean'
  best = max((r[mean] for r in rows if not math.isnan(r[mean])),
             default=math.nan)
  for row in rows:
    row['gap_to_best'] = row[mean] - best
  return rows


def _too_few_seeds(baseline_seeds: int, variant_seeds: int) -> str:
  """Why seeds cannot be resampled, or '' where both sides have enough."""
  if min(baseline_seeds, variant_seeds) >= significance.MIN_SEEDS:
    return ''
  def seeds(count):
    return f'{count} seed' + ('' if count == 1 else 's')
  return (f'{seeds(baseline_seeds)} of the baseline, {seeds(variant_seeds)} '
          f'of the variant; resampling needs {significance.MIN_SEEDS} a side')


_POINT_COLUMNS = (
    'name', 'variant', 'seed', 'status', 'test_bleu', 'test_chrf',
    'test_accuracy', 'test_sequence_accuracy',
    'test_bleu_signature', 'test_chrf_signature', 'eval_loss', 'steps',
    'num_params', 'train_tokens_per_sec', 'peak_memory_bytes',
    'peak_memory_kind', 'test_decode_tokens_per_sec', 'train_seconds',
    'train_cpu_seconds', 'wall_seconds', 'error',
)


def _write_csv(path: str, columns: Sequence[str], rows: list[dict]) -> None:
  text = io.StringIO(newline='')
  writer = csv.DictWriter(text, columns, extrasaction='ignore')
  writer.writeheader()
  writer.writerows(rows)
  run_records.write_text(path, text.getvalue())


def write_report(workdir: str, num_samples: int = 1000) -> str:
  """Writes the report files of the study in `workdir`; returns report.md."""
  manifest_path = os.path.join(workdir, 'study.json')
  if not os.path.exists(manifest_path):
    raise FileNotFoundError(
        f'{manifest_path} does not exist: {workdir} is not a study workdir. '
        'Run the study (python launch.py --config=STUDY --workdir=DIR) or '
        'print its commands (--print_commands) first.'
    )
  manifest = run_records.read_json(
      manifest_path,
      'Rerun the study command (or the same command with --print_commands): '
      'it writes study.json again.',
  )
  records = [read_point(workdir, e) for e in manifest['points']]
  baseline = manifest['baseline']
  figure = headline_lib.of_study(
      [r.results for r in records if r.status == runner.DONE])
  rows = summarise(records, baseline, num_samples, figure)

  point_rows = []
  for r in records:
    point_rows.append({
        'name': r.name, 'variant': r.variant, 'seed': r.seed,
        'status': r.status, 'wall_seconds': round(r.wall_seconds, 1),
        'reused_from': r.reused_from, 'error': r.error,
        **{k: v for k, v in r.results.items() if k in _POINT_COLUMNS},
    })
  unfilled = headline_lib.other_task_columns(figure)
  _write_csv(os.path.join(workdir, 'results.csv'),
             [c for c in _POINT_COLUMNS if c not in unfilled], point_rows)
  _write_csv(os.path.join(workdir, 'summary.csv'),
             [c for c in rows[0] if c not in unfilled], rows)

  kinds = {r.results.get('peak_memory_kind') for r in records if r.results}
  memory_kind = '/'.join(sorted(k for k in kinds if k)) or 'n/a'
  figures = []
  if plots.valid_loss(os.path.join(workdir, 'valid_loss.png'), records):
    figures.append(
        ('Validation loss against training steps', 'valid_loss.png'))
  if plots.bleu(os.path.join(workdir, 'bleu.png'), rows, baseline):
    figures.append(('Test BLEU per variant', 'bleu.png'))
  if figure is headline_lib.ACCURACY and plots.per_variant(
      os.path.join(workdir, 'accuracy.png'), rows, baseline,
      'test_accuracy', 'test answer accuracy'):
    figures.append(('Test answer accuracy per variant', 'accuracy.png'))
  if plots.accuracy_by(os.path.join(workdir, 'accuracy_by_length.png'),
                       records, 'length'):
    figures.append(('Test answer accuracy against sequence length',
                    'accuracy_by_length.png'))
  for item in ('pairs', 'tokens'):
    if plots.accuracy_by(os.path.join(workdir, f'accuracy_by_{item}.png'),
                         records, item):
      figures.append((f'Test answer accuracy against {item}',
                      f'accuracy_by_{item}.png'))
  base_config = next(
      (r.results['config'] for r in records if 'config' in r.results), {}
  )
  mechanisms = plots.mechanisms(manifest['points'], base_config)
  if plots.attention_benchmark(
      os.path.join(workdir, 'attention_benchmark.png'), mechanisms):
    figures.append((
        'One attention call of each mechanism the study uses, against '
        'sequence length', 'attention_benchmark.png',
    ))

  head_lines, head_figures = attention_heads.section(workdir, [
      (r.variant, runner.point_dir(workdir, study_lib.Point(
          e['variant'], e['seed'], e['overrides'])))
      for r, e in zip(records, manifest['points']) if r.status == runner.DONE])
  figures += head_figures

  budget = manifest['budget']
  budget_text = (
      f'equal training steps ({budget["train_steps"]:,} per point)'
      if budget['kind'] == 'steps'
      else f'equal training time ({budget["train_seconds"]} s per point)'
  )
  done = sum(r.status == runner.DONE for r in records)
  reused = [r for r in records if r.reused_from]
  steps = sorted({r.results['steps'] for r in records if r.results})
  if budget['kind'] == 'time':
    budget_text += report_text.cpu_share_text(records)
  if budget['kind'] == 'steps' and len(steps) > 1:
    budget_text += (
        f' **Warning: the finished points trained {steps} steps; points '
        'finished under an earlier budget were kept. Delete their sub-'
        'workdirs and rerun to compare at one budget.**'
    )
  lines = [
      f'# Study `{os.path.splitext(os.path.basename(manifest["study"]))[0]}`',
      '',
      manifest['description'],
      '',
      f'- Command: `{manifest["command"]}`',
      f'- Commit: `{manifest["commit"]}` (of the latest run of the study); '
      f'{report_text.point_commits_text(records)}',
      f'- Budget: {budget_text}.',
      f'- Points finished: {done} of {len(records)}; total wall time '
      f'{sum(r.wall_seconds for r in records) / 60:.1f} min.',
      *([f'- Reused: {", ".join(r.name for r in reused)} (the same config '
         'finished in another study, copied from there; their wall time is '
         'the original run\'s, included above).'] if reused else []),
      f'- Baseline: `{baseline}`.',
      *report_text.test_set_lines(records, base_config, figure),
      '- Parameters evaluated: '
      f'{report_text.evaluated_parameters_text(records)}.',
      '',
      '## Results',
      '',
      report_text.markdown_table(rows, baseline, memory_kind, figure),
      report_text.significance_text(rows, baseline, figure),
      '',
      *report_text.accuracy_by_setting_lines(records),
      *report_text.chapter_lines(records),
      report_text.explanation(figure, num_samples, memory_kind),
      '',
  ]
  if manifest.get('reference'):
    lines += ['## Published finding, for comparison', '',
              manifest['reference'], '']
  lines += head_lines
  failed = [r for r in records if r.status == runner.FAILED]
  unfinished = [r for r in records
                if r.status in (runner.PENDING, runner.INTERRUPTED)]
  if failed:
    lines += ['## Failed points', '', '| point | error |', '|---|---|']
    lines += [f'| {r.name} | {r.error.splitlines()[0] if r.error else ""} |'
              for r in failed]
    lines += ['', 'Each point\'s full traceback is in its error.json, its '
              'output in log.txt.', '']
  if unfinished:
    lines += ['## Unfinished points', '']
    lines += [f'- {r.name}: {r.status}' + (f' ({r.error})' if r.error else '')
              for r in unfinished]
    lines += ['']
  if figures:
    lines += ['## Plots', '']
    for title, name in figures:
      lines += [f'### {title}', '', f'![{title}]({name})', '']
  lines += ['Per point: results.csv; per variant: summary.csv.', '']
  text = '\n'.join(lines)
  run_records.write_text(os.path.join(workdir, 'report.md'), text)
  logging.info('Wrote %s (%d of %d points finished).',
               os.path.join(workdir, 'report.md'), done, len(records))
  return text


def main(argv):
  del argv
  try:
    write_report(flags.FLAGS.workdir, flags.FLAGS.bootstrap_samples)
  except (FileNotFoundError, ValueError) as e:
    # Not a study workdir, a damaged record, or points that cannot be
    # compared (different test sets or tasks): the message names the fix.
    raise app.UsageError(str(e)) from None


if __name__ == '__main__':
  # Defined here, not at import: launch.py imports this module and has its
  # own --workdir.
  flags.DEFINE_string('workdir', None, 'Study workdir.', required=True)
  flags.DEFINE_integer('bootstrap_samples', 1000, 'Paired bootstrap resamples.')
  app.run(main)
