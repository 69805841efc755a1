"""The markdown pieces of a study report (report.py): the results table,
the significance summary, the header's lines and the explanation of the
columns. Records are report.PointRecord; rows are report.summarise's.
"""

import collections
import math

import numpy as np

from attention_jax.ablation import headline as headline_lib
from attention_jax.ablation import runner
from attention_jax.ablation import significance
from attention_jax.diagnostics import tasks as diagnostic_tasks


def mean(values) -> float:
  """Mean of the values that are not None; nan when none are."""
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else math.nan


def sample_std(values) -> float:
  """Sample standard deviation (ddof 1); nan for fewer than two values."""
  return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def signatures(records: list, key: str) -> str:
  """The distinct sacrebleu signatures `key` of `records`, '; '-joined.

  '' where none has one (results written before signatures were kept).
  """
  return '; '.join(sorted({r.results[key] for r in records
                           if key in r.results}))


def fmt(value: float, digits: int = 2) -> str:
  """`value` to `digits` decimals ('0.00', never '-0.00'); '–' for None or
  NaN."""
  if value is None or math.isnan(value):
    return '–'
  text = f'{value:.{digits}f}'
  # A tiny negative value rounds to '-0.00'.
  return text[1:] if text.startswith('-') and float(text) == 0 else text


def fmt_int(value: float) -> str:
  """`value` rounded, with thousands separators; '–' for None or NaN."""
  return '–' if value is None or math.isnan(value) else f'{value:,.0f}'


def markdown_table(rows: list[dict], baseline: str, memory_kind: str,
                   figure: headline_lib.Headline = headline_lib.BLEU) -> str:
  """The results table: one row per variant, the study's figure (BLEU and
  chrF, or answer accuracy and sequences right), the paired bootstrap's
  difference to the baseline, costs."""
  digits = figure.digits
  accuracy = figure is headline_lib.ACCURACY
  if accuracy:
    scores = ('test answer accuracy (mean ± std)', 'sequences right (mean)',
              'Δ accuracy vs baseline [95% CI]')
  else:
    scores = ('test BLEU (mean ± std)', 'test chrF (mean ± std)',
              'Δ BLEU vs baseline [95% CI]')
  costs = ('valid loss', 'steps', 'params', 'train tok/s',
           f'peak memory MiB ({memory_kind})',
           *(() if accuracy else ('decode tok/s',)), 'wall s/point')
  columns = ('variant', 'seeds', *scores, 'p', '95% CI, seeds resampled too',
             'p, seeds too', 'vs best', *costs)
  head = ('| ' + ' | '.join(columns) + ' |\n' + '|---' * len(columns)
          + '|\n')
  lines = []
  for r in rows:
    if r['variant'] == baseline:
      delta, p, seeds_ci, seeds_p = 'baseline', '', '', ''
    elif math.isnan(r['difference']):
      delta, p, seeds_ci, seeds_p = '–', '–', '–', '–'
    else:
      delta = (f'{r["difference"]:+.{digits}f} [{r["ci_low"]:+.{digits}f}, '
               f'{r["ci_high"]:+.{digits}f}]')
      p = f'{r["p_value"]:.3f}'
      if r['seeds_not_resampled']:
        seeds_ci, seeds_p = f'n/a: {r["seeds_not_resampled"]}', 'n/a'
      else:
        seeds_ci = (f'[{r["seeds_ci_low"]:+.{digits}f}, '
                    f'{r["seeds_ci_high"]:+.{digits}f}]')
        seeds_p = f'{r["seeds_p_value"]:.3f}'
    if accuracy:
      score_cells = (
          f'{fmt(r["test_accuracy_mean"], 3)} ± '
          f'{fmt(r["test_accuracy_std"], 3)}',
          fmt(r['test_sequence_accuracy_mean'], 3))
    else:
      score_cells = (
          f'{fmt(r["test_bleu_mean"])} ± {fmt(r["test_bleu_std"])}',
          f'{fmt(r["test_chrf_mean"])} ± {fmt(r["test_chrf_std"])}')
    cells = (
        r['variant'], f'{r["finished"]}/{r["points"]}', *score_cells,
        delta, p, seeds_ci, seeds_p, fmt(r['gap_to_best'], digits),
        fmt(r['valid_loss'], 3), fmt_int(r['steps']),
        fmt_int(r['num_params']), fmt_int(r['train_tokens_per_sec']),
        fmt_int(r['peak_memory_mib']),
        *(() if accuracy else (fmt_int(r['decode_tokens_per_sec']),)),
        fmt_int(r['wall_seconds']))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return head + '\n'.join(lines) + '\n'


def significance_text(
    rows: list[dict], baseline: str,
    figure: headline_lib.Headline = headline_lib.BLEU) -> str:
  """Which variants differ from the baseline at significance.LEVEL, by
  resampling the test items (sentences or sequences) and by resampling
  them and the seeds."""
  compared = [r for r in rows
              if r['variant'] != baseline and not math.isnan(r['p_value'])]
  not_compared = ' '.join(
      f'{r["variant"]} not compared: {r["not_compared"]}.' for r in rows
      if r['not_compared'])
  if not compared:
    base = next((r for r in rows if r['variant'] == baseline), None)
    why = (f' The baseline `{baseline}` has no finished point yet.'
           if base is not None and not base['finished'] else '')
    return ' '.join(filter(None, (
        f'No variant could be compared with the baseline.{why}',
        not_compared)))
  parts = [f'Of {len(compared)} variants compared with `{baseline}` at '
           f'p < {significance.LEVEL}:']
  for key, how in (('p_value', f'resampling test {figure.items}'),
                   ('seeds_p_value',
                    f'resampling test {figure.items} and seeds')):
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
  return ' '.join(filter(None, (*parts, not_compared)))


def test_sentences_text(records: list,
                         base_config: dict) -> str:
  """How many test sentences the finished points were scored on."""
  counts = {len(r.test_items) for r in records
            if r.test_items is not None}
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


def test_sequences_text(records: list) -> str:
  """How many test sequences a diagnostic study's points were scored on,
  per setting."""
  items = next((r.test_items for r in records if r.test_items is not None),
               None)
  if items is None:
    return 'unknown: no finished point left answers/test.csv'
  # summarise() has refused differing test sets, so the first tells.
  settings = dict.fromkeys(items)
  per_setting = {items.count(s) for s in settings}
  each = (f'{per_setting.pop():,} of each' if len(per_setting) == 1
          else 'per setting: ' + ', '.join(
              f'{s} {items.count(s):,}' for s in settings))
  return f'{len(items):,} ({each} of {len(settings)} settings)'


def accuracy_by_setting_lines(records: list) -> list[str]:
  """A diagnostic study's test answer accuracy per variant and setting
  (length, item count), mean over the finished seeds; none elsewhere."""
  done = [r for r in records if r.status == runner.DONE
          and 'accuracy_by_setting' in r.results]
  if not done:
    return []
  settings = list(dict.fromkeys(
      s for r in done for s in r.results['accuracy_by_setting']))
  tasks = sorted({r.results['task'] for r in done if 'task' in r.results})
  counted = '; '.join(
      f'{name}: items = {diagnostic_tasks.get(name).items_are}'
      for name in tasks if name in diagnostic_tasks.TASKS)
  lines = ['Test answer accuracy per setting (mean over finished seeds; '
           f'length = tokens per sequence{"; " + counted if counted else ""}'
           '):',
           '',
           '| variant | ' + ' | '.join(settings) + ' |',
           '|---' * (len(settings) + 1) + '|']
  for variant in dict.fromkeys(r.variant for r in done):
    by_setting = [r.results['accuracy_by_setting'] for r in done
                  if r.variant == variant]
    cells = [fmt(float(np.mean([b[s] for b in by_setting if s in b])), 3)
             if any(s in b for b in by_setting) else '–' for s in settings]
    lines.append(f'| {variant} | ' + ' | '.join(cells) + ' |')
  return lines + ['']


def chapter_lines(records: list) -> list[str]:
  """A chapter-level study's verse-level scores per variant (the chapter
  translations split back into verses, decode/chapter_scores.py); none
  elsewhere."""
  done = [r for r in records if r.status == runner.DONE
          and 'test_verse_bleu' in r.results]
  if not done:
    return []
  lines = ['Chapter translations scored verse by verse against the '
           'sentence-level references (mean ± std over finished seeds; a '
           'chapter whose translation lost or gained verse separators is '
           'scored whole, as one segment, and counted as misaligned):',
           '',
           '| variant | seeds | test verse BLEU | test verse chrF '
           '| chapters misaligned |',
           '|---|---|---|---|---|']
  for variant in dict.fromkeys(r.variant for r in done):
    points = [r.results for r in done if r.variant == variant]

    def spread(key, points=points):
      values = [p[key] for p in points if key in p]
      if not values:
        return '–'
      return f'{fmt(mean(values))} ± {fmt(sample_std(values))}'

    misaligned = sum(p.get('test_chapters_misaligned', 0) for p in points)
    chapters = sum(p.get('test_chapters', 0) for p in points)
    lines.append(f'| {variant} | {len(points)} | {spread("test_verse_bleu")} '
                 f'| {spread("test_verse_chrf")} '
                 f'| {misaligned} of {chapters} |')
  return lines + ['']


# Points whose CPU seconds per training second differ by more than this
# factor did not have the same machine: an equal-time comparison between
# them measures their shares of the CPU as much as their mechanisms.
UNEQUAL_CPU = 1.25


def cpu_share_text(records: list) -> str:
  """The CPU the finished points of an equal-time study had while training,
  and a warning where it differed."""
  shares = {r.name: r.results['train_cpu_seconds'] / r.results['train_seconds']
            for r in records if r.status == runner.DONE
            and r.results.get('train_cpu_seconds')
            and r.results.get('train_seconds')}
  if not shares:
    return ''
  low, high = min(shares, key=shares.get), max(shares, key=shares.get)
  text = (f'; the training processes used {shares[low]:.2f} to '
          f'{shares[high]:.2f} CPU seconds per second')
  if shares[high] > UNEQUAL_CPU * shares[low]:
    text += (f' **Warning: unequal CPU ({high}: {shares[high]:.2f}, {low}: '
             f'{shares[low]:.2f}): other work shared the machine with some '
             'points, so at equal time they trained less for that reason. '
             'Rerun those points on an otherwise idle machine.**')
  return text


def point_commits_text(records: list) -> str:
  """The code commits the finished points ran at, with how many each."""
  done = [r for r in records if r.status == runner.DONE]
  counts = collections.Counter(
      r.commit[:7] + ('+modified' if r.commit.endswith('+modified') else '')
      if r.commit else 'not recorded' for r in done)
  if not counts:
    return 'no finished point yet.'
  return ('finished points by the commit of their finishing attempt: '
          + ', '.join(f'`{commit}` {n}' for commit, n in counts.items())
          + '.')


def test_set_lines(records: list, base_config: dict,
                   figure: headline_lib.Headline) -> list[str]:
  """The header's lines on what the points were scored on."""
  if figure is headline_lib.ACCURACY:
    return [f'- Test sequences scored: '
            f'{test_sequences_text(records)}.']
  chapters = any('test_chapters' in r.results for r in records)
  return [
      f'- Test {"chapters" if chapters else "sentences"} scored: '
      f'{test_sentences_text(records, base_config)}'
      + (' (the table\'s BLEU and chrF take a chapter as one segment; '
         'verse-level scores follow it)' if chapters else '') + '.',
      f'- sacrebleu signatures: BLEU '
      f'{signature_text(records, "test_bleu_signature")}; chrF '
      f'{signature_text(records, "test_chrf_signature")}.',
  ]


def explanation(figure: headline_lib.Headline, num_samples: int,
                memory_kind: str) -> str:
  """What the results table's columns are and where they come from."""
  if figure is headline_lib.ACCURACY:
    scored = (
        'Test answer accuracy is the share of the answer positions of the '
        'test sequences (every length and item count of the data config, '
        'the same sequences for every point) predicted exactly, '
        '"sequences right" the share of sequences with every answer right '
        '(attention_jax/train/diagnostic_task.py); mean ± sample standard '
        'deviation over the finished seeds. Δ is the variant\'s mean '
        'accuracy minus the baseline\'s, in accuracy (0-1); its 95% '
        'interval (2.5th to 97.5th percentile) and p-value come from '
        f'{num_samples} paired bootstrap resamples of the test sequences '
        '(each point\'s answers/test.csv), each resample scoring every seed '
        'of both sides on the same sequences (attention_jax/ablation/'
        'significance.py).')
    costs = ('Valid loss is the NLL of the answer tokens on the validation '
             'sequences after training; train tok/s counts the tokens of '
             'the training sequences.')
  else:
    scored = (
        'Test BLEU and chrF are sacrebleu\'s corpus BLEU and chrF (chrF2) '
        'on the test sentences scored (above), after the tokenizer\'s '
        'normalisation of both sides (attention_jax/decode/bleu.py; '
        'signatures above); mean ± sample standard deviation over the '
        'finished seeds. Δ is the variant\'s mean BLEU minus the '
        'baseline\'s; its 95% interval (2.5th to 97.5th percentile) and '
        f'p-value come from {num_samples} paired bootstrap resamples of the '
        'test sentences, each resample scoring every seed of both sides on '
        'the same sentences (attention_jax/ablation/significance.py).')
    costs = ('Valid loss is the token-level NLL on the whole validation '
             'split after training; train tok/s counts target tokens; decode '
             'tok/s counts output pieces of the test translation (beam '
             'search).')
  return (
      f'{scored} That interval covers test-set sampling only; the "seeds '
      'resampled too" interval and p-value also draw each side\'s seeds with '
      'replacement, adding the spread of training runs (a rough allowance '
      'with few seeds; n/a where a side has fewer than '
      f'{significance.MIN_SEEDS} finished seeds, as one seed resamples '
      'nothing). "vs best" is the gap to the best mean. Where a finished '
      f'point of either side left no per-{figure.items[:-1]} record, the '
      'variant is not compared (named under the table). '
      f'{costs} Peak memory is {memory_kind} of the training process; wall '
      's/point includes start-up, compilation and evaluation.')
