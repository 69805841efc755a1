"""Studies: sweep expansion, bookkeeping, and a tiny study run end to end."""

import csv
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import event_files
import smoke_runs
from tensorboardX.proto import plugin_hparams_pb2

from attention_jax import attention
from attention_jax.ablation import report
from attention_jax.ablation import report_text
from attention_jax.ablation import runner
from attention_jax.ablation import study as study_lib
from attention_jax.decode import bleu
from attention_jax.diagnostics import answers
from attention_jax.train import config_check

_STUDY = '''\
"""A tiny study for tests."""
from attention_jax.ablation import study
from experiments.configs import smoke
BASELINE = {baseline!r}
REFERENCE = 'Someone (2026) found something.'


def get_config(arg=None):
  config = smoke.get_config(arg)
  config.num_train_steps = 10
  config.max_train_seconds = 0
  config.log_every = 5
  config.eval_every = 5
  config.checkpoint_every = 5
  config.eval.valid_bleu = False
  config.eval.final_sentences = 16
  return config


def sweep():
  return {sweep}
'''
_TWO_POINTS = (
    "study.grid({'attention': ('model.attention', "
    "('softmax', 'linear', 'bogus'))}, seeds=(0,))"
)


def _write_study(tmp_path, sweep=_TWO_POINTS,
                 baseline='attention=softmax') -> str:
  path = tmp_path / 'tiny_study.py'
  path.write_text(_STUDY.format(sweep=sweep, baseline=baseline))
  return str(path)


def test_grid_is_axes_times_seeds_seed_by_seed():
  points = study_lib.grid(
      {'heads': ('model.num_heads', (1, 2)),
       'attention': ('model.attention', ('dot', 'linear'))},
      seeds=(0, 7),
  )
  assert [p.name for p in points[:4]] == [
      'heads=1,attention=dot/seed=0', 'heads=1,attention=linear/seed=0',
      'heads=2,attention=dot/seed=0', 'heads=2,attention=linear/seed=0',
  ]
  assert [p.seed for p in points] == [0] * 4 + [7] * 4
  assert points[6].overrides == {
      'model.num_heads': 2, 'model.attention': 'dot', 'seed': 7,
  }


def test_study_point_configs_apply_overrides_to_a_copy(tmp_path):
  study = study_lib.load(_write_study(tmp_path))
  linear = study.point('attention=linear/seed=0')
  config = study.point_config(linear)
  assert config.model.attention == 'linear'
  assert study.base_config.model.attention == 'softmax'
  assert study.variants == ['attention=softmax', 'attention=linear',
                            'attention=bogus']
  with pytest.raises(study_lib.StudyError, match='No point'):
    study.point('attention=linear/seed=3')


@pytest.mark.parametrize('sweep, baseline, message', [
    ("[study.Point('a=dot', 0, {'model.attention': 'dot'})] * 2",
     'a=dot', 'named twice'),
    ("[study.Point('a=dot', 0, {'seed': 1})]", 'a=dot', 'not its own seed'),
    ("study.grid({'a': ('model.attention', ('dot',))}, seeds=(0,))",
     'a=linear', 'BASELINE'),
    ("study.grid({'a': ('num_train_steps', (5, 10))}, seeds=(0,))",
     'a=5', 'one budget'),
    ("study.grid({'a': ('model.no_such_field', (1,))}, seeds=(0,))",
     'a=1', 'lacks'),
    ("study.grid({'a': ('model.num_heads', ('four',))}, seeds=(0,))",
     'a=four', 'wrong type'),
    ('[]', 'a', 'no points'),
])
def test_broken_sweeps_are_refused_before_running(tmp_path, sweep, baseline,
                                                  message):
  with pytest.raises(study_lib.StudyError, match=message):
    study_lib.load(_write_study(tmp_path, sweep, baseline))


def _fake_train(outcome):
  def train(config, workdir):
    if outcome == 'fail':
      raise FloatingPointError(f'loss diverged in {config.model.attention}')
    os.makedirs(os.path.join(workdir, 'checkpoints', '5'), exist_ok=True)
    if outcome == 'preempted':
      return None
    results = {'test_bleu': 1.0, 'max_train_seconds': config.max_train_seconds}
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f)
    return results
  return train


def test_point_bookkeeping(tmp_path):
  study = study_lib.load(_write_study(tmp_path))
  workdir = str(tmp_path / 'w')
  point = study.point('attention=linear/seed=0')
  path = runner.point_dir(workdir, point)
  assert runner.status(path) == runner.PENDING

  with pytest.raises(FloatingPointError):
    runner.run_point(study, workdir, point.name, 0, _fake_train('fail'))
  assert runner.status(path) == runner.FAILED
  with open(os.path.join(path, 'error.json')) as f:
    assert json.load(f)['error'] == (
        'FloatingPointError: loss diverged in linear'
    )

  runner.run_point(study, workdir, point.name, 0, _fake_train('preempted'))
  assert runner.status(path) == runner.INTERRUPTED  # error.json cleared.

  runner.run_point(study, workdir, point.name, 90, _fake_train('done'))
  assert runner.status(path) == runner.DONE
  with open(os.path.join(path, 'results.json')) as f:
    assert json.load(f)['max_train_seconds'] == 90  # The time budget.
  with open(os.path.join(path, 'attempts.jsonl')) as f:
    attempts = [json.loads(line) for line in f]
  assert [a['outcome'] for a in attempts] == ['failed', 'preempted', 'done']
  # Each attempt names the code it ran: a study spans sessions and commits.
  head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=smoke_runs.REPO,
                        capture_output=True, text=True,
                        check=True).stdout.strip()
  assert all(a['commit'].startswith(head) for a in attempts)
  assert runner.finishing_commit(path) == attempts[-1]['commit']


def test_report_counts_the_finished_points_by_commit():
  def record(status, commit):
    return report.PointRecord(
        'p', 'v', 0, status, {}, '', 0.0, [], None, None, '', commit)
  records = [record(runner.DONE, 'a' * 40), record(runner.DONE, 'a' * 40),
             record(runner.DONE, 'b' * 40 + '+modified'),
             record(runner.DONE, None), record(runner.PENDING, None)]
  assert report_text.point_commits_text(records) == (
      'finished points by the commit of their finishing attempt: '
      '`aaaaaaa` 2, `bbbbbbb+modified` 1, `not recorded` 1.')
  assert report_text.point_commits_text(records[-1:]) == (
      'no finished point yet.')


def test_a_finished_points_log_line_fits_its_task():
  # The runner read results['test_bleu'] after every point and stopped the
  # diagnostics study (answer accuracy, no BLEU) after its first point.
  assert runner.headline({'test_bleu': 13.934}) == 'test BLEU 13.93'
  assert runner.headline({'task': 'mqar', 'test_accuracy': 0.17201}) == (
      'test answer accuracy 0.172')
  assert runner.headline({}) == 'no test figure in results.json'


_STOPPED_IN_EVALUATION = """
import os, signal, sys, time
sys.path[:0] = [{tests!r}, {repo!r}]
from attention_jax.ablation import runner
from attention_jax.ablation import study as study_lib

def train(config, workdir):
  # Training is over (no preemption handler of the trainer's is active);
  # the study's SIGTERM arrives during the final evaluation.
  os.makedirs(os.path.join(workdir, 'checkpoints', '10'))
  os.kill(os.getpid(), signal.SIGTERM)
  time.sleep(60)

study = study_lib.load({study!r})
runner.run_point(study, {workdir!r}, 'attention=linear/seed=0', 0, train)
"""


def test_a_point_stopped_outside_training_records_its_attempt(tmp_path):
  # SIGTERM during a point's final evaluation used to kill it before its
  # attempt was written: its wall time was lost from the report.
  path = _write_study(tmp_path)
  workdir = str(tmp_path / 'w')
  code = _STOPPED_IN_EVALUATION.format(
      tests=os.path.dirname(os.path.abspath(__file__)),
      repo=smoke_runs.REPO, study=path, workdir=workdir)
  result = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=120, cwd=smoke_runs.REPO)
  assert result.returncode == -signal.SIGTERM, result.stderr
  point = runner.point_dir(workdir,
                           study_lib.load(path).point('attention=linear/seed=0'))
  with open(os.path.join(point, 'attempts.jsonl')) as f:
    attempts = [json.loads(line) for line in f]
  assert [a['outcome'] for a in attempts] == ['preempted']
  assert runner.status(point) == runner.INTERRUPTED
  assert not os.path.exists(os.path.join(point, 'error.json'))


def _finish_fake_point(path, config, bleu):
  os.makedirs(os.path.join(path, 'translations'))
  with open(os.path.join(path, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort())
  with open(os.path.join(path, 'results.json'), 'w') as f:
    json.dump({'test_bleu': bleu, 'eval_loss': 3.0, 'steps': 10,
               'num_params': 5, 'test_bleu_signature': 'nrefs:1|tok:13a'}, f)
  with open(os.path.join(path, 'attempts.jsonl'), 'w') as f:
    f.writelines(json.dumps({'seconds': s, 'outcome': o}) + '\n'
                 for s, o in ((20.0, 'failed'), (100.0, 'done')))
  with open(os.path.join(path, 'translations', 'test.txt'), 'w') as f:
    f.write('In the beginning\n')
  with open(os.path.join(path, 'translations', 'test_references.txt'),
            'w') as f:
    f.write('In the beginning God\n')


def test_points_finished_in_another_study_are_reused(tmp_path):
  study = study_lib.load(_write_study(tmp_path))
  other = str(tmp_path / 'other_study')
  for bleu, point in enumerate(study.points):
    config = runner.budgeted_config(study, point, 0)
    # The other study named its points differently; configs are compared.
    _finish_fake_point(os.path.join(other, 'points', f'v{bleu}', 'seed=9'),
                       config, float(bleu))
  changed = runner.budgeted_config(study, study.points[0], 0)
  changed.seed = 5
  assert runner.finished_twin(changed, [other]) is None

  workdir = str(tmp_path / 'study')
  # Every point has a twin, so nothing is trained (no subprocess starts).
  assert runner.run_study(study, workdir, [], 0, reuse_from=[other])
  for bleu, point in enumerate(study.points):
    path = runner.point_dir(workdir, point)
    assert runner.status(path) == runner.DONE
    with open(os.path.join(path, 'results.json')) as f:
      assert json.load(f)['test_bleu'] == float(bleu)
    with open(os.path.join(path, 'reused.json')) as f:
      assert json.load(f)['source'].endswith(f'v{bleu}/seed=9')
  text = report.write_report(workdir, num_samples=10)
  assert '- Reused: attention=softmax/seed=0, attention=linear/seed=0' in (
      text)

  # Each reused point is one TensorBoard hparams session, still one after
  # the study runs again.
  assert runner.run_study(study, workdir, [], 0, reuse_from=[other])
  for bleu, point in enumerate(study.points):
    files, hparams, metrics = _read_hparams_session(
        runner.point_dir(workdir, point))
    assert len(files) == 1
    assert hparams == {'variant': point.variant, 'seed': 0.0,
                       'model.attention': point.variant.split('=')[1]}
    assert metrics == {'test_bleu': float(bleu), 'eval_loss': 3.0,
                       'steps': 10.0, 'num_params': 5.0,
                       'wall_seconds': 120.0}


def _read_hparams_session(path):
  """(events files, hparams, final metrics) of the session in `path`."""
  files = glob.glob(os.path.join(path, 'events.out.tfevents.*'))
  hparams, metrics, tags = {}, {}, []
  for name in files:
    for event in event_files.read_events(name):
      for value in event.summary.value:
        tags.append(value.tag)
        if value.tag == '_hparams_/session_start_info':
          start = plugin_hparams_pb2.HParamsPluginData.FromString(
              value.metadata.plugin_data.content).session_start_info
          for key, v in start.hparams.items():
            hparams[key] = getattr(v, v.WhichOneof('kind'))
        elif not value.tag.startswith('_hparams_/'):
          metrics[value.tag] = value.simple_value
  # No experiment summary: TensorBoard would show only its columns.
  assert '_hparams_/experiment' not in tags
  if files:
    assert tags[0] == '_hparams_/session_start_info'
    assert tags[-1] == '_hparams_/session_end_info'
  return files, hparams, metrics


def _finish_scored_point(path, config, hypotheses, references,
                         old_results=False):
  """A finished point as training leaves it, with its test translations.

  With old_results, as training left it before chrF and signatures.
  """
  os.makedirs(os.path.join(path, 'translations'))
  scores = bleu.corpus_scores(hypotheses, references)
  results = {'test_bleu': scores.bleu,
             'eval_loss': 3.0, 'steps': 10, 'num_params': 5,
             'config': config.to_dict()}
  if not old_results:
    results.update(test_chrf=scores.chrf,
                   test_bleu_signature=scores.bleu_signature,
                   test_chrf_signature=scores.chrf_signature)
  with open(os.path.join(path, 'results.json'), 'w') as f:
    json.dump(results, f)
  for name, lines in (('test.txt', hypotheses),
                      ('test_references.txt', references)):
    with open(os.path.join(path, 'translations', name), 'w') as f:
      f.writelines(line + '\n' for line in lines)


def _study_workdir(tmp_path, attentions, seeds, equal_time=0):
  """A study of `model.attention` over `attentions` and `seeds`, and its
  workdir with study.json written (no point run)."""
  study = study_lib.load(_write_study(
      tmp_path, "study.grid({'attention': ('model.attention', "
      f"{tuple(attentions)!r})}}, seeds={tuple(seeds)!r})"))
  workdir = str(tmp_path / 'study')
  runner.write_manifest(study, workdir, [], equal_time)
  return study, workdir


def test_report_of_one_seed_a_side_resamples_no_seeds(tmp_path):
  # A partial workdir: seed 0 of each side finished on the 60 sentences
  # eval.final_sentences limits the test split to; the variant differs from
  # the baseline in one word. Resampling one seed resamples nothing, so the
  # seed columns are n/a with the reason, not a copy of the sentence columns.
  study, workdir = _study_workdir(tmp_path, ('softmax', 'linear'), (0, 1))
  references = [f'Verse {i} tells of the earth and the waters above it .'
                for i in range(60)]
  baseline_output = [r.replace('waters', 'water') if i % 3 else r
                     for i, r in enumerate(references)]
  variant_output = list(baseline_output)
  variant_output[1] = references[1]

  def finish(point, hypotheses, old_results=False):
    config = runner.budgeted_config(study, point, 0)
    config.eval.final_sentences = 60
    _finish_scored_point(runner.point_dir(workdir, point), config, hypotheses,
                         references, old_results)

  # Seed 0 as results were written before chrF and signatures: missing.
  finish(study.point('attention=softmax/seed=0'), baseline_output, True)
  finish(study.point('attention=linear/seed=0'), variant_output, True)
  text = report.write_report(workdir, num_samples=100)
  row = next(line for line in text.splitlines()
             if line.startswith('| attention=linear |'))
  cells = [c.strip() for c in row.split('|')[1:-1]]
  assert cells[3] == '– ± –'  # No chrF.
  assert cells[6] == ('n/a: 1 seed of the baseline, 1 seed of the variant; '
                      'resampling needs 2 a side')
  assert cells[7] == 'n/a'
  assert cells[5] != 'n/a'  # Test sentences alone are still resampled.
  assert ('- sacrebleu signatures: BLEU missing (results written before '
          'signatures were recorded); chrF missing') in text
  assert '- Parameters evaluated: the last checkpoint of each point.' in text
  assert {r['test_chrf'] for r in _read_csv(
      os.path.join(workdir, 'results.csv'))} == {''}
  assert 'Resampling test sentences and seeds: n/a for attention=linear' in (
      text)
  assert 'whole test split' not in text
  assert ('- Test sentences scored: 60 (the first 60 of the test split: '
          'eval.final_sentences = 60).') in text
  summary = {r['variant']: r for r in _read_csv(
      os.path.join(workdir, 'summary.csv'))}
  assert summary['attention=linear']['seeds_p_value'] == 'nan'

  # With the second seeds the seed columns are resampled; their chrF and
  # signatures are reported.
  finish(study.point('attention=softmax/seed=1'), baseline_output)
  finish(study.point('attention=linear/seed=1'), variant_output)
  # This point evaluated the mean of its last two checkpoints.
  averaged_path = os.path.join(runner.point_dir(
      workdir, study.point('attention=linear/seed=1')), 'results.json')
  with open(averaged_path) as f:
    results = json.load(f)
  with open(averaged_path, 'w') as f:
    json.dump({**results, 'averaged_checkpoint_steps': [8, 10]}, f)
  text = report.write_report(workdir, num_samples=100)
  assert ('- Parameters evaluated: the mean parameters of checkpoints '
          '(attention=linear/seed=1: steps 8, 10); the last checkpoint for '
          'the other 3.') in text
  row = next(line for line in text.splitlines()
             if line.startswith('| attention=linear |'))
  cells = [c.strip() for c in row.split('|')[1:-1]]
  assert cells[6].startswith('[') and float(cells[7]) >= 0
  assert 'n/a for' not in text
  scores = bleu.corpus_scores(variant_output, references)
  assert cells[3] == f'{scores.chrf:.2f} ± –'
  assert (f'- sacrebleu signatures: BLEU `{scores.bleu_signature}` (missing '
          f'for 2 of 4 finished points); chrF `{scores.chrf_signature}`') in (
              text)
  points = {r['name']: r for r in _read_csv(
      os.path.join(workdir, 'results.csv'))}
  linear = points['attention=linear/seed=1']
  assert float(linear['test_chrf']) == pytest.approx(scores.chrf)
  assert linear['test_bleu_signature'] == scores.bleu_signature
  assert linear['test_chrf_signature'] == scores.chrf_signature
  summary = {r['variant']: r for r in _read_csv(
      os.path.join(workdir, 'summary.csv'))}
  assert float(summary['attention=linear']['test_chrf_mean']) == (
      pytest.approx(scores.chrf))
  assert summary['attention=linear']['bleu_signature'] == (
      scores.bleu_signature)
  # No diagnostic-task columns: a translation study has no answers.
  assert not [c for c in list(summary['attention=linear'])
              + list(linear) if 'accuracy' in c]


def _finish_diagnostic_point(path, right_per_setting):
  """A finished diagnostic point: per setting, 20 test sequences of 2
  answers, of which the first `right` answers are right."""
  settings = list(right_per_setting)
  rows = []
  for index, right in enumerate(right_per_setting.values()):
    for sequence in range(20):
      got = min(2, max(0, right - 2 * sequence))
      rows.append((index, got, 2))
  os.makedirs(os.path.join(path, 'answers'))
  with open(os.path.join(path, 'answers', 'test.csv'), 'w') as f:
    f.write(answers.to_csv(np.array(rows), settings))
  results = {
      'task': 'mqar', 'eval_loss': 0.5, 'steps': 10, 'num_params': 5,
      'test_accuracy': sum(right_per_setting.values()) / (40 * len(settings)),
      'test_sequence_accuracy': sum(r[1] == 2 for r in rows) / len(rows),
      'accuracy_by_setting': {s: r / 40
                              for s, r in right_per_setting.items()},
  }
  with open(os.path.join(path, 'results.json'), 'w') as f:
    json.dump(results, f)


def test_report_of_a_diagnostic_study_compares_answer_accuracy(tmp_path):
  # The diagnostics study's points report answer accuracy and no BLEU; the
  # report's table, significance and header were BLEU's (empty columns,
  # sacrebleu signatures, no comparison).
  study, workdir = _study_workdir(tmp_path, ('softmax', 'linear', 'gla'),
                                  (0,))
  short, long = 'length=16,items=2', 'length=32,items=2'
  _finish_diagnostic_point(runner.point_dir(
      workdir, study.point('attention=softmax/seed=0')), {short: 40, long: 40})
  _finish_diagnostic_point(runner.point_dir(
      workdir, study.point('attention=linear/seed=0')), {short: 40, long: 10})
  text = report.write_report(workdir, num_samples=200)
  assert 'BLEU' not in text and 'sacrebleu' not in text
  assert '- Test sequences scored: 40 (20 of each of 2 settings).' in text
  row = next(line for line in text.splitlines()
             if line.startswith('| attention=linear |'))
  cells = [c.strip() for c in row.split('|')[1:-1]]
  # 50 of 80 answers right against 80 of 80; 25 of 40 sequences all right.
  assert cells[2:4] == ['0.625 ± –', '0.625']
  assert cells[4].startswith('-0.375 [')
  assert float(cells[5]) < 0.05
  assert cells[8] == '-0.375'
  assert ('Resampling test sequences: significantly better: none; '
          'significantly worse: attention=linear') in text
  assert f'| attention=linear | 1.000 | 0.250 |' in text
  assert ('Test answer accuracy per setting (mean over finished seeds; '
          'length = tokens per sequence; mqar: items = key-value pairs):') in (
              text)
  # The point without a finished run is listed, not compared.
  assert '| attention=gla | 0/1 | – ± – | – | – |' in text
  assert os.path.exists(os.path.join(workdir, 'accuracy.png'))
  # Its CSV files have no translation columns (they were all empty).
  with open(os.path.join(workdir, 'summary.csv')) as f:
    summary_columns = next(csv.reader(f))
  with open(os.path.join(workdir, 'results.csv')) as f:
    point_columns = next(csv.reader(f))
  assert 'test_accuracy_mean' in summary_columns
  assert 'test_accuracy' in point_columns
  assert not [c for c in summary_columns + point_columns
              if 'bleu' in c or 'chrf' in c or 'decode' in c]

  # A point finished before answers/test.csv was written: its variant's
  # mean stands, but a paired difference over the other seeds alone would
  # not be the difference of the printed means, so it is not compared.
  os.remove(os.path.join(runner.point_dir(
      workdir, study.point('attention=linear/seed=0')), 'answers',
      'test.csv'))
  text = report.write_report(workdir, num_samples=10)
  assert '| attention=linear | 1/1 | 0.625 ± – | 0.625 | – |' in text
  assert ('attention=linear not compared: no answers/test.csv from '
          'attention=linear/seed=0 (finished before it was written; delete '
          'its point directory and rerun the study to train it again).') in (
              text)
  # Nothing is compared while the baseline has not finished, and the report
  # says so.
  shutil.rmtree(runner.point_dir(
      workdir, study.point('attention=softmax/seed=0')))
  text = report.write_report(workdir, num_samples=10)
  assert ('No variant could be compared with the baseline. The baseline '
          '`attention=softmax` has no finished point yet.') in text

  # A translation point in the same study is refused by name.
  gla = study.point('attention=gla/seed=0')
  _finish_scored_point(runner.point_dir(workdir, gla),
                       runner.budgeted_config(study, gla, 0), ['a'], ['a'])
  with pytest.raises(ValueError, match='one study per task'):
    report.write_report(workdir, num_samples=10)


def test_report_of_an_equal_time_study_warns_of_unequal_cpu(tmp_path):
  # At equal training time a point that shared the CPU trains less: the
  # report says how much CPU each point's training had, and warns.
  study, workdir = _study_workdir(tmp_path, ('softmax', 'linear'), (0,),
                                  equal_time=100)
  references = ['In the beginning was the word .'] * 20
  for name, cpu_seconds in (('attention=softmax/seed=0', 190.0),
                            ('attention=linear/seed=0', 95.0)):
    point = study.point(name)
    path = runner.point_dir(workdir, point)
    _finish_scored_point(path, runner.budgeted_config(study, point, 100),
                         references, references)
    with open(os.path.join(path, 'results.json')) as f:
      results = json.load(f)
    results.update(train_seconds=100.0, train_cpu_seconds=cpu_seconds)
    with open(os.path.join(path, 'results.json'), 'w') as f:
      json.dump(results, f)
  text = report.write_report(workdir, num_samples=10)
  assert ('- Budget: equal training time (100 s per point); the training '
          'processes used 0.95 to 1.90 CPU seconds per second **Warning: '
          'unequal CPU (attention=softmax/seed=0: 1.90, '
          'attention=linear/seed=0: 0.95)') in text
  points = {r['name']: r for r in _read_csv(
      os.path.join(workdir, 'results.csv'))}
  assert float(points['attention=linear/seed=0']['train_cpu_seconds']) == 95


def test_report_gives_a_chapter_studys_verse_level_scores():
  def point(variant, seed, verse_bleu, misaligned):
    results = {'test_bleu': 20.0, 'test_verse_bleu': verse_bleu,
               'test_verse_chrf': 50.0, 'test_chapters': 52,
               'test_chapters_misaligned': misaligned}
    return report.PointRecord(f'{variant}/seed={seed}', variant, seed,
                              runner.DONE, results, '', 1.0, [], None, None,
                              '')

  lines = report_text.chapter_lines([
      point('softmax', 0, 10.0, 1), point('softmax', 1, 12.0, 0),
      point('linear', 0, 6.0, 7)])
  assert '| softmax | 2 | 11.00 ± 1.41 | 50.00 ± 0.00 | 1 of 104 |' in lines
  assert '| linear | 1 | 6.00 ± – | 50.00 ± – | 7 of 52 |' in lines
  # Sentence-level studies have no verse scores and no such table.
  sentence_level = point('softmax', 0, 1.0, 0)
  del sentence_level.results['test_verse_bleu']
  assert not report_text.chapter_lines([sentence_level])


def _run(flags, tmp_path, name) -> str:
  log_path = tmp_path / f'{name}.log'
  with open(log_path, 'w') as log:
    returncode = smoke_runs.launch(flags, log).wait(timeout=600)
  text = log_path.read_text()
  assert returncode == 0, text
  return text


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_tiny_study_runs_skips_resumes_and_reports(tmp_path, data_dir):
  study_file = _write_study(tmp_path)
  workdir = tmp_path / 'study'
  flags = [f'--config={study_file}', f'--workdir={workdir}',
           f'--config.data.data_dir={data_dir}']
  points = workdir / 'points'
  linear = points / 'attention=linear' / 'seed=0'

  log = _run(flags, tmp_path, 'first')
  assert "FAILED after" in log
  assert "Unknown attention mechanism 'bogus'" in log
  assert '0 of 3 points done; ETA unknown' in log
  assert '2 of 3 points done; ETA 0:' in log
  rows = {r['name']: r for r in _read_csv(workdir / 'results.csv')}
  assert [rows[n]['status'] for n in rows] == ['done', 'done', 'failed']
  assert float(rows['attention=linear/seed=0']['steps']) == 10
  assert rows['attention=linear/seed=0']['test_chrf_signature'].startswith(
      'nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:')
  files, hparams, metrics = _read_hparams_session(str(linear))
  assert len(files) == 1
  assert hparams['model.attention'] == 'linear'
  assert metrics['test_chrf'] == pytest.approx(
      float(rows['attention=linear/seed=0']['test_chrf']))
  assert metrics['steps'] == 10
  # The failed point has no session.
  assert not _read_hparams_session(
      str(points / 'attention=bogus' / 'seed=0'))[0]
  assert 'Unknown attention' in rows['attention=bogus/seed=0']['error']
  for name in ('report.md', 'summary.csv', 'valid_loss.png', 'bleu.png',
               'attention_benchmark.png'):
    assert (workdir / name).stat().st_size > 0, name
  text = (workdir / 'report.md').read_text()
  assert '| attention=linear | 1/1 |' in text
  assert '## Failed points' in text
  assert "Unknown attention mechanism 'bogus'" in text
  assert 'Someone (2026) found something.' in text
  assert 'equal training steps (10 per point)' in text

  # An interrupted point: its checkpoint of step 10 is there, its
  # results.json was cut short (0 bytes) by a kill.
  (linear / 'results.json').write_bytes(b'')
  baseline_log = (points / 'attention=softmax' / 'seed=0' / 'log.txt')
  baseline_before = baseline_log.read_text()
  log = _run(flags, tmp_path, 'second')
  assert 'attention=softmax/seed=0: finished earlier, skipped.' in log
  assert 'attention=linear/seed=0: its results.json is damaged' in log
  assert 'attention=linear/seed=0: resuming' in log
  assert 'attention=bogus/seed=0: failed before, retrying' in log
  assert baseline_log.read_text() == baseline_before
  assert 'Resumed from step 10' in (linear / 'log.txt').read_text()
  assert runner.status(str(linear)) == runner.DONE

  # Only the failed point is left to spread over machines.
  printed = subprocess.run(
      [sys.executable, 'launch.py', *flags, '--print_commands'],
      cwd=smoke_runs.REPO, capture_output=True, text=True, check=True,
  ).stdout.splitlines()
  assert printed == [
      f'python launch.py --config={study_file} --workdir={workdir} '
      '--point=attention=bogus/seed=0 --equal_time=0 '
      f'--config.data.data_dir={data_dir}',
      f'python -m attention_jax.ablation.report --workdir={workdir}',
  ]

  # The report on its own, over the existing workdir.
  (workdir / 'report.md').unlink()
  subprocess.run(
      [sys.executable, '-m', 'attention_jax.ablation.report',
       f'--workdir={workdir}', '--bootstrap_samples=200'],
      cwd=smoke_runs.REPO, check=True, capture_output=True,
  )
  assert '| attention=linear | 1/1 |' in (workdir / 'report.md').read_text()


def test_report_of_a_directory_without_a_study_says_what_to_do(tmp_path):
  with pytest.raises(FileNotFoundError, match='not a study workdir'):
    report.write_report(str(tmp_path))
  result = subprocess.run(
      [sys.executable, '-m', 'attention_jax.ablation.report',
       f'--workdir={tmp_path}'],
      cwd=smoke_runs.REPO, capture_output=True, text=True,
  )
  assert result.returncode != 0
  assert 'not a study workdir' in result.stderr
  assert 'Traceback' not in result.stderr


def test_plain_config_refuses_study_flags(tmp_path):
  result = subprocess.run(
      [sys.executable, 'launch.py', '--config=experiments/configs/smoke.py',
       f'--workdir={tmp_path}', '--print_commands'],
      cwd=smoke_runs.REPO, capture_output=True, text=True,
  )
  assert result.returncode != 0
  assert 'defines no sweep()' in result.stderr
  assert 'Traceback' not in result.stderr


def test_shipped_studies_load():
  for name in ('attention', 'heads', 'cross_attention', 'modern',
               'long_context'):
    study = study_lib.load(
        os.path.join(smoke_runs.REPO, 'experiments', 'ablations', f'{name}.py')
    )
    assert len({p.seed for p in study.points}) == 3, name
  heads = study_lib.load(
      os.path.join(smoke_runs.REPO, 'experiments', 'ablations', 'heads.py')
  )
  assert heads.variants == [f'heads={h}' for h in (1, 2, 4, 8, 16)]
  assert textwrap.dedent(heads.reference).startswith('Vaswani')


def test_diagnostics_study_gives_the_linear_family_its_short_convolution():
  path = os.path.join(smoke_runs.REPO, 'experiments', 'ablations',
                      'diagnostics.py')
  study = study_lib.load(path)
  causal = [name for name in attention.names()
            if attention.get(name).capabilities.causal]
  assert study.variants == causal + ['forgetting_decay_time=4-256']
  assert len({p.seed for p in study.points}) == 3
  convolved = set()
  for point in study.points:
    config = study.point_config(point)
    config_check.check_config(config)
    mechanism = config.model.attention
    if config.model.options[mechanism].get('conv_size'):
      convolved.add(mechanism)
  assert convolved == {'retnet', 'gla', 'mamba2', 'deltanet',
                       'gated_deltanet'}
  fox = study.point_config(study.point('forgetting_decay_time=4-256/seed=0'))
  assert (fox.model.attention, fox.model.options.forgetting.to_dict()) == (
      'forgetting', {'decay_time_min': 4.0, 'decay_time_max': 256.0})


def test_long_context_study_points_check_at_every_row_length():
  path = os.path.join(smoke_runs.REPO, 'experiments', 'ablations',
                      'long_context.py')
  for preset in ('1024', '2048', '4096'):
    study = study_lib.load(f'{path}:{preset}')
    assert study.variants == ['softmax', 'local', 'linear', 'gated_deltanet',
                              'hybrid']
    for point in study.points:
      config = study.point_config(point)
      assert config.data.max_len == int(preset)
      # One micro-batch row per simulated device; the rest as shipped.
      config.batch_size = config.micro_batches * jax.device_count()
      config_check.check_config(config)
      assert config.data.dataset == 'bible_chapters_es_en'
