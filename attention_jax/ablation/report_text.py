"""The markdown pieces of a study report (report.py): the results table,
the significance summary and the header's lines. Records are
report.PointRecord; rows are report.summarise's.
"""

import math

from attention_jax.ablation import runner
from attention_jax.ablation import significance


def signatures(records: list, key: str) -> str:
  """The distinct sacrebleu signatures `key` of `records`, '; '-joined.

  '' where none has one (results written before signatures were kept).
  """
  return '; '.join(sorted({r.results[key] for r in records
                           if key in r.results}))


def fmt(value: float, digits: int = 2) -> str:
  """`value` to `digits` decimals; '–' for None or NaN."""
  return '–' if value is None or math.isnan(value) else f'{value:.{digits}f}'


def fmt_int(value: float) -> str:
  """`value` rounded, with thousands separators; '–' for None or NaN."""
  return '–' if value is None or math.isnan(value) else f'{value:,.0f}'


def markdown_table(rows: list[dict], baseline: str, memory_kind: str) -> str:
  """The results table: one row per variant, BLEU/chrF, the paired
  bootstrap's difference to the baseline, costs."""
  head = (
      '| variant | seeds | test BLEU (mean ± std) | test chrF (mean ± std) '
      '| Δ BLEU vs baseline [95% CI] '
      '| p | 95% CI, seeds resampled too | p, seeds too | vs best '
      '| valid loss | steps | params | train tok/s | '
      f'peak memory MiB ({memory_kind}) | decode tok/s | wall s/point |\n'
      + '|---' * 16 + '|\n'
  )
  lines = []
  for r in rows:
    if r['variant'] == baseline:
      delta, p, seeds_ci, seeds_p = 'baseline', '', '', ''
    elif math.isnan(r['difference']):
      delta, p, seeds_ci, seeds_p = '–', '–', '–', '–'
    else:
      delta = (f'{r["difference"]:+.2f} [{r["ci_low"]:+.2f}, '
               f'{r["ci_high"]:+.2f}]')
      p = f'{r["p_value"]:.3f}'
      if r['seeds_not_resampled']:
        seeds_ci, seeds_p = f'n/a: {r["seeds_not_resampled"]}', 'n/a'
      else:
        seeds_ci = (f'[{r["seeds_ci_low"]:+.2f}, '
                    f'{r["seeds_ci_high"]:+.2f}]')
        seeds_p = f'{r["seeds_p_value"]:.3f}'
    lines.append(
        f'| {r["variant"]} | {r["finished"]}/{r["points"]} '
        f'| {fmt(r["test_bleu_mean"])} ± {fmt(r["test_bleu_std"])} '
        f'| {fmt(r["test_chrf_mean"])} ± {fmt(r["test_chrf_std"])} '
        f'| {delta} | {p} | {seeds_ci} | {seeds_p} '
        f'| {fmt(r["gap_to_best"])} '
        f'| {fmt(r["valid_loss"], 3)} | {fmt_int(r["steps"])} '
        f'| {fmt_int(r["num_params"])} '
        f'| {fmt_int(r["train_tokens_per_sec"])} '
        f'| {fmt_int(r["peak_memory_mib"])} '
        f'| {fmt_int(r["decode_tokens_per_sec"])} '
        f'| {fmt_int(r["wall_seconds"])} |'
    )
  return head + '\n'.join(lines) + '\n'


def significance_text(rows: list[dict], baseline: str) -> str:
  """Which variants differ from the baseline at significance.LEVEL, by
  resampling sentences and by resampling sentences and seeds."""
  compared = [r for r in rows
              if r['variant'] != baseline and not math.isnan(r['p_value'])]
  if not compared:
    return 'No variant could be compared with the baseline.'
  parts = [f'Of {len(compared)} variants compared with `{baseline}` at '
           f'p < {significance.LEVEL}:']
  for key, how in (('p_value', 'resampling test sentences'),
                   ('seeds_p_value', 'resampling test sentences and seeds')):
    if key == 'seeds_p_value':
      skipped = [r for r in compared if r['seeds_not_resampled']]
      compared = [r for r in compared if not r['seeds_not_resampled']]
      if skipped:
        parts.append(
            f'{how.capitalize()}: n/a for '
            + '; '.join(f'{r["variant"]} ({r["seeds_not_resampled"]})'
                        for r in skipped) + '.'
        )
      if not compared:
        continue
    better = [r['variant'] for r in compared
              if significance.is_significant(r[key]) and r['difference'] > 0]
    worse = [r['variant'] for r in compared
             if significance.is_significant(r[key]) and r['difference'] < 0]
    same = [r['variant'] for r in compared
            if not significance.is_significant(r[key])]
    parts.append(
        f'{how.capitalize()}: significantly better: '
        f'{", ".join(better) or "none"}; '
        f'significantly worse: {", ".join(worse) or "none"}; '
        f'not significantly different: {", ".join(same) or "none"}.'
    )
  return ' '.join(parts)


def test_sentences_text(records: list,
                         base_config: dict) -> str:
  """How many test sentences the finished points were scored on."""
  counts = {len(r.test_references) for r in records
            if r.test_references is not None}
  if not counts:
    return ('unknown: no finished point left '
            'translations/test_references.txt')
  # summarise() has refused differing test sets, so there is one count.
  count, = counts
  limit = base_config.get('eval', {}).get('final_sentences')
  if limit:
    return (f'{count:,} (the first {count:,} of the test split: '
            f'eval.final_sentences = {limit:,})')
  if limit == 0:
    return f'{count:,} (the whole test split)'
  return f'{count:,}'


def signature_text(records: list, key: str) -> str:
  """The finished points' sacrebleu signatures `key`, or why none."""
  done = [r for r in records if r.status == runner.DONE]
  distinct = signatures(done, key)
  if not distinct:
    return 'missing (results written before signatures were recorded)'
  missing = sum(key not in r.results for r in done)
  return (f'`{distinct}`'
          + (f' (missing for {missing} of {len(done)} finished points)'
             if missing else ''))


def evaluated_parameters_text(records: list) -> str:
  """Which parameters the final evaluation scored: the last checkpoint, or
  the mean of the last k (`eval.average_checkpoints`), per finished point."""
  done = [r for r in records if r.status == runner.DONE]
  averaged = {r.name: r.results['averaged_checkpoint_steps'] for r in done
              if r.results.get('averaged_checkpoint_steps')}
  if not averaged:
    return 'the last checkpoint of each point'
  text = '; '.join(f'{name}: steps {", ".join(map(str, steps))}'
                   for name, steps in averaged.items())
  last = len(done) - len(averaged)
  return (f'the mean parameters of checkpoints ({text})'
          + (f'; the last checkpoint for the other {last}' if last else ''))


def accuracy_lines(rows: list[dict]) -> list[str]:
  """The table of a diagnostic study's test accuracy; none elsewhere."""
  rows = [r for r in rows if not math.isnan(r['test_accuracy_mean'])]
  if not rows:
    return []
  return [
      '| variant | seeds | test answer accuracy (mean ± std) |',
      '|---|---|---|',
      *(f'| {r["variant"]} | {r["finished"]}/{r["points"]} '
        f'| {fmt(r["test_accuracy_mean"], 3)} ± '
        f'{fmt(r["test_accuracy_std"], 3)} |' for r in rows),
      '',
      'Answer accuracy: the share of answer positions of the test sequences '
      'predicted exactly, over every setting (attention_jax/train/'
      'diagnostic_task.py); per setting in each point\'s results.json.',
      '',
  ]
