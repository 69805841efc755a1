"""Runs a study's points one after another, each in its own process.

Layout of a study workdir:

  study.json                      the points, baseline, budget, command, commit
  points/<variant>/seed=<s>/      one trainer workdir per point, plus
      log.txt                     the point's output (appended per attempt)
      attempts.jsonl              wall time, outcome and code commit of
                                  each attempt
      error.json                  why the last attempt failed, if it did
      events.out.tfevents.*       its hyper-parameters and final scores for
                                  TensorBoard's HPARAMS tab (hparams.py)
  report.md, results.csv, summary.csv, *.png   (attention_jax.ablation.report)

A point with a readable results.json is finished and skipped (an empty or
damaged one, cut short by a kill, does not count); one with a checkpoint
resumes from it (the trainer does that); one that failed is retried once per
study run and, if it fails again, recorded with its error while the study
goes on. SIGTERM or Ctrl-C (SIGINT) stops the point in progress at a
checkpoint and ends the study, the point recorded as interrupted, not
failed; rerunning the same command continues. With reuse_from, a point whose
exact config another study has finished is copied from there (reused.json
says from where) instead of trained again. Each point start logs how many
points are done and an ETA at the pace of those measured.
"""

import glob
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback

from absl import logging
import ml_collections

from attention_jax import progress
from attention_jax import run_records
from attention_jax.ablation import headline as headline_lib
from attention_jax.ablation import hparams
from attention_jax.ablation import study as study_lib
from attention_jax.train import workdir_lock

DONE, FAILED, INTERRUPTED, PENDING = 'done', 'failed', 'interrupted', 'pending'
LAUNCH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))),
    'launch.py',
)


def point_dir(workdir: str, point: study_lib.Point) -> str:
  return os.path.join(workdir, 'points', point.variant, f'seed={point.seed}')


def read_results(path: str) -> dict:
  """The results.json of the point whose workdir is `path`.

  Raises:
    DamagedRecordError: it is empty or not JSON, naming it and the fix.
  """
  return run_records.read_json(
      os.path.join(path, 'results.json'),
      'The point is not finished: rerunning the study trains it again '
      '(resuming from its checkpoint).',
  )


def wall_seconds(path: str) -> float:
  """Seconds of all recorded attempts of the point whose workdir is `path`."""
  return sum(r.get('seconds', 0.0) for r in
             run_records.read_jsonl(os.path.join(path, 'attempts.jsonl')))


def finishing_commit(path: str) -> str | None:
  """The code commit of the attempt that finished the point in `path`; None
  if it is unfinished or its attempts predate commits being recorded."""
  finished = [r for r in run_records.read_jsonl(
      os.path.join(path, 'attempts.jsonl')) if r.get('outcome') == DONE]
  return finished[-1].get('commit') if finished else None


def status(path: str) -> str:
  """Where the point whose workdir is `path` stands."""
  if os.path.exists(os.path.join(path, 'results.json')):
    try:
      read_results(path)
      return DONE
    except run_records.DamagedRecordError:
      pass
  if os.path.exists(os.path.join(path, 'error.json')):
    return FAILED
  checkpoints = os.path.join(path, 'checkpoints')
  if os.path.isdir(checkpoints) and os.listdir(checkpoints):
    return INTERRUPTED
  return PENDING


def budgeted_config(
    study: study_lib.Study, point: study_lib.Point, equal_time: int
) -> ml_collections.ConfigDict:
  """The point's config at the study's budget.

  Equal steps (equal_time=0): every point trains config.num_train_steps
  steps, with no time limit. Equal time: every point trains equal_time
  seconds (num_train_steps is then only an upper bound).
  """
  config = study.point_config(point)
  config.max_train_seconds = equal_time
  return config


def _commit() -> str:
  """HEAD of the code's git checkout, '+modified' if tracked files differ."""
  def git(*args):
    return subprocess.run(
        ['git', *args], cwd=os.path.dirname(LAUNCH), capture_output=True,
        text=True, check=True,
    ).stdout.strip()
  try:
    head = git('rev-parse', 'HEAD')
    return head + ('+modified' if git('status', '--porcelain', '-uno') else '')
  except (OSError, subprocess.CalledProcessError):
    return 'unknown (not a git checkout)'


def point_command(
    study: study_lib.Study, workdir: str, point: study_lib.Point,
    config_args: list[str], equal_time: int,
) -> list[str]:
  """The command that runs `point` alone (on any machine sharing workdir)."""
  return [
      'python', 'launch.py', f'--config={study.path}', f'--workdir={workdir}',
      f'--point={point.name}', f'--equal_time={equal_time}', *config_args,
  ]


def write_manifest(
    study: study_lib.Study, workdir: str, config_args: list[str],
    equal_time: int,
) -> None:
  """study.json: what the report needs to know about the study."""
  os.makedirs(workdir, exist_ok=True)
  manifest = {
      'study': study.path,
      'description': study.description,
      'reference': study.reference,
      'baseline': study.baseline,
      'budget': (
          {'kind': 'time', 'train_seconds': equal_time} if equal_time
          else {'kind': 'steps',
                'train_steps': study.base_config.num_train_steps}
      ),
      'command': shlex.join([
          'python', 'launch.py', f'--config={study.path}',
          f'--workdir={workdir}', *config_args,
          *([f'--equal_time={equal_time}'] if equal_time else []),
      ]),
      'commit': _commit(),
      'points': [
          {'name': p.name, 'variant': p.variant, 'seed': p.seed,
           'overrides': dict(p.overrides)}
          for p in study.points
      ],
  }
  run_records.write_json(os.path.join(workdir, 'study.json'), manifest)


def run_point(study: study_lib.Study, workdir: str, name: str,
              equal_time: int, train) -> None:
  """Trains one point in this process; records its wall time or error.

  Args:
    study: the loaded study.
    workdir: the study workdir.
    name: the point's name, e.g. 'attention=local/seed=1'.
    equal_time: the study's time budget in seconds; 0 for equal steps.
    train: `trainer.train_and_evaluate` (passed in to keep this module free
      of JAX, so listing and reporting a study starts fast).
  """
  point = study.point(name)
  path = point_dir(workdir, point)
  os.makedirs(path, exist_ok=True)
  error_path = os.path.join(path, 'error.json')
  if os.path.exists(error_path):
    os.remove(error_path)
  start, commit = time.time(), _commit()
  outcome = 'preempted'
  # The trainer turns SIGTERM/SIGINT into a checkpoint while it trains;
  # outside that (loading, the final evaluation) the signal still ends the
  # point as it did, but only after its attempt is recorded.
  previous = {signum: signal.signal(signum, _raise_stopped)
              for signum in (signal.SIGTERM, signal.SIGINT)}
  try:
    try:
      if train(budgeted_config(study, point, equal_time), path) is not None:
        outcome = DONE
    except Exception as e:  # Recorded for the report, then raised.
      outcome = FAILED
      run_records.write_json(error_path,
                             {'error': f'{type(e).__name__}: {e}',
                              'traceback': traceback.format_exc()})
      raise
    finally:
      run_records.append_jsonl(os.path.join(path, 'attempts.jsonl'),
                               {'start': start,
                                'seconds': time.time() - start,
                                'outcome': outcome, 'commit': commit})
  except _Stopped as stopped:
    # Dies by the signal, as the runner expects of a point it stopped.
    signal.signal(stopped.signum, signal.SIG_DFL)
    os.kill(os.getpid(), stopped.signum)
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)


class _Stopped(BaseException):
  """SIGTERM/SIGINT outside training; not an Exception, so no error.json."""

  def __init__(self, signum: int):
    super().__init__(signum)
    self.signum = signum


def _raise_stopped(signum, frame):
  del frame
  raise _Stopped(signum)


def read_error(path: str) -> str:
  """Why the last attempt of the point whose workdir is `path` failed."""
  try:
    return run_records.read_json(
        os.path.join(path, 'error.json'),
        "The point's log.txt shows why it failed; rerunning the study "
        'retries it.',
    )['error']
  except run_records.DamagedRecordError as e:
    return f'(unknown: {e})'


# How a point's process ends when the study's signal stopped it: saved and
# exited (0), or killed by the SIGINT or SIGTERM itself outside training.
_STOPPED_BY_SIGNAL = (0, -signal.SIGINT, -signal.SIGTERM)


class _Forwarder:
  """Passes SIGTERM/SIGINT on to the running point and remembers it."""

  def __init__(self):
    self.child = None
    self.stopped = False

  def __call__(self, signum, frame):
    del signum, frame
    self.stopped = True
    if self.child is not None and self.child.poll() is None:
      self.child.send_signal(signal.SIGTERM)


def _log_tail(path: str, lines: int = 15) -> str:
  try:
    with open(path, errors='replace') as f:
      return ''.join(f.readlines()[-lines:])
  except OSError:
    return ''


# What a finished point adopted from another study keeps: enough for the
# report, not the checkpoints.
# results.json comes last, so an interrupted copy is not taken as finished.
_ADOPTED = ('config.json', 'metrics.jsonl', 'attempts.jsonl', 'translations',
            'results.json')


def finished_twin(config: ml_collections.ConfigDict,
                  workdirs: list[str]) -> str | None:
  """A finished point of another study trained with exactly `config`."""
  wanted = json.loads(config.to_json_best_effort())
  for other in workdirs:
    pattern = os.path.join(other, 'points', '*', '*', 'results.json')
    for results in sorted(glob.glob(pattern)):
      path = os.path.dirname(results)
      if status(path) != DONE:
        continue
      try:
        recorded = run_records.read_json(os.path.join(path, 'config.json'), '')
      except (OSError, run_records.DamagedRecordError):
        continue
      if recorded == wanted:
        return path
  return None


def adopt(source: str, path: str) -> None:
  """Copies a finished twin's results into `path`, noting where from."""
  os.makedirs(path, exist_ok=True)
  run_records.write_json(os.path.join(path, 'reused.json'),
                         {'source': os.path.abspath(source)})
  for name in _ADOPTED:
    if os.path.isdir(os.path.join(source, name)):
      shutil.copytree(os.path.join(source, name), os.path.join(path, name),
                      dirs_exist_ok=True)
    elif os.path.exists(os.path.join(source, name)):
      with open(os.path.join(source, name), 'rb') as f:
        run_records.write_bytes(os.path.join(path, name), f.read())


def run_study(study: study_lib.Study, workdir: str, config_args: list[str],
              equal_time: int, reuse_from: list[str] = ()) -> bool:
  """Runs every point not finished yet, one after another.

  Args:
    study: the loaded study.
    workdir: the study workdir.
    config_args: --config.FIELD=VALUE flags, passed on to every point.
    equal_time: seconds of training per point; 0 for equal steps.
    reuse_from: workdirs of other studies; a point whose exact config one of
      them has finished is copied from there instead of trained again (a
      shared baseline, say).

  Returns:
    False when stopped by a signal before the last point (rerun to go on).

  Raises:
    workdir_lock.WorkdirInUseError: when another study runs in `workdir`.
  """
  with workdir_lock.hold(workdir, '.lock.study'):
    return _run_points(study, workdir, config_args, equal_time, reuse_from)


def headline(results: dict) -> str:
  """A point's main test figure, for the log: BLEU for translation, answer
  accuracy for the diagnostic tasks (which have no BLEU)."""
  figure = headline_lib.of_results(results)
  if figure is None:
    return 'no test figure in results.json'
  return figure.format(results[figure.key])


def _write_hparams(path: str, point: study_lib.Point) -> None:
  hparams.write(path, point, read_results(path), wall_seconds(path))


def _progress(study: study_lib.Study, workdir: str) -> str:
  """Points done of all, and the time the rest take at the measured pace."""
  done = [path for path in (point_dir(workdir, p) for p in study.points)
          if status(path) == DONE]
  # Points done without a recorded attempt (copied by hand) have no pace.
  measured = [s for s in map(wall_seconds, done) if s > 0]
  remaining = len(study.points) - len(done)
  eta = progress.eta_seconds(len(measured), len(measured) + remaining,
                             sum(measured))
  return (f'{len(done)} of {len(study.points)} points done; ETA '
          f'{progress.format_seconds(eta)}')


def _run_points(study, workdir, config_args, equal_time, reuse_from) -> bool:
  """`run_study`, with the workdir locked."""
  write_manifest(study, workdir, config_args, equal_time)
  forwarder = _Forwarder()
  previous = {s: signal.signal(s, forwarder)
              for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    for index, point in enumerate(study.points, 1):
      path = point_dir(workdir, point)
      state = status(path)
      where = f'[{index}/{len(study.points)}] {point.name}'
      if state == DONE:
        logging.info('%s: finished earlier, skipped.', where)
        # Also gives points finished elsewhere (--point) their session.
        _write_hparams(path, point)
        continue
      if os.path.exists(os.path.join(path, 'results.json')):
        logging.warning('%s: its results.json is damaged; training it again.',
                        where)
      twin = finished_twin(
          budgeted_config(study, point, equal_time), list(reuse_from)
      ) if reuse_from and state == PENDING else None
      if twin is not None:
        adopt(twin, path)
        _write_hparams(path, point)
        logging.info('%s: the same config finished in %s; reused.', where,
                     twin)
        continue
      logging.info(
          '%s: %s (log: %s); %s.', where,
          {FAILED: 'failed before, retrying', INTERRUPTED: 'resuming',
           PENDING: 'starting'}[state], os.path.join(path, 'log.txt'),
          _progress(study, workdir),
      )
      os.makedirs(path, exist_ok=True)
      command = [sys.executable, LAUNCH,
                 *point_command(study, workdir, point, config_args,
                                equal_time)[2:]]
      start = time.time()
      with open(os.path.join(path, 'log.txt'), 'a') as log:
        forwarder.child = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT
        )
        returncode = forwarder.child.wait()
        forwarder.child = None
      seconds = time.time() - start
      state = status(path)
      if state == DONE:
        _write_hparams(path, point)
        logging.info('%s: done in %.0f s, %s.', where, seconds,
                     headline(read_results(path)))
      elif forwarder.stopped and returncode in _STOPPED_BY_SIGNAL:
        logging.info('%s: interrupted after %.0f s; it resumes from its last '
                     'checkpoint.', where, seconds)
      elif returncode != 0:
        error_path = os.path.join(path, 'error.json')
        if not os.path.exists(error_path):
          # Killed, or died before Python could record why.
          run_records.write_json(
              error_path,
              {'error': f'exited with code {returncode}',
               'traceback': _log_tail(os.path.join(path, 'log.txt'))})
        logging.warning('%s: FAILED after %.0f s: %s', where, seconds,
                        read_error(path))
      if forwarder.stopped:
        logging.info(
            'Stopped by a signal at %s; rerun the same command to resume.',
            point.name,
        )
        return False
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  return True


def print_commands(study: study_lib.Study, workdir: str,
                   config_args: list[str], equal_time: int) -> None:
  """One command per point not finished yet, then the report command."""
  write_manifest(study, workdir, config_args, equal_time)
  for point in study.points:
    if status(point_dir(workdir, point)) != DONE:
      print(shlex.join(
          point_command(study, workdir, point, config_args, equal_time)
      ))
  print(shlex.join(
      ['python', '-m', 'attention_jax.ablation.report', f'--workdir={workdir}']
  ))
