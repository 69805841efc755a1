"""Two real processes joined by jax.distributed against one process.

The processes run `launch.py` on 127.0.0.1 with CPU collectives over gloo,
two simulated devices each; the reference is one process with four.
"""

import json
import os
import re
import signal
import subprocess
import time

import pytest

import smoke_runs


def _launch(workdir, data_dir, steps, devices, log, distributed=()):
  overrides = {
      'num_train_steps': steps, 'log_every': 5, 'checkpoint_every': 10,
      'eval_every': 1000, 'eval.bleu_sentences': 8,
      'eval.final_sentences': 16,
  }
  return smoke_runs.start(
      workdir, data_dir, log, devices, overrides, distributed
  )


def _run(*args):
  with open(args[4], 'w') as log:
    process = _launch(*args[:4], log)
    assert process.wait(timeout=600) == 0, open(args[4]).read()[-3000:]


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  steps = [r['step'] for r in records if 'train/loss' in r]
  # A second writer would repeat every step.
  assert len(steps) == len(set(steps)), steps
  return {r['step']: r['train/loss'] for r in records if 'train/loss' in r}


def test_two_processes_match_one_and_their_checkpoint_restores_in_one(
    data_dir, tmp_path
):
  reference, shared = tmp_path / 'one_process', tmp_path / 'two_processes'
  _run(reference, data_dir, 40, 4, tmp_path / 'reference.log')

  port = smoke_runs.free_port()
  logs = [tmp_path / f'process_{i}.log' for i in range(2)]
  processes = []
  for index, log_path in enumerate(logs):
    log = open(log_path, 'w')
    processes.append(_launch(
        shared, data_dir, 20, 2, log,
        (f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
         f'--process_id={index}'),
    ))
  try:
    codes = [p.wait(timeout=600) for p in processes]
  except subprocess.TimeoutExpired:
    # Every thread's stack goes to the logs quoted below (launch.py's
    # SIGUSR1 handler), to show where the pair is stuck.
    for p in processes:
      if p.poll() is None:
        p.send_signal(signal.SIGUSR1)
    time.sleep(5)
    codes = [p.poll() for p in processes]
  finally:
    # A process stuck in a collective ignores SIGTERM (JAX's preemption
    # handler waits for its peers); it must not outlive the test.
    for p in processes:
      if p.poll() is None:
        p.kill()
  outputs = [open(path).read() for path in logs]
  assert codes == [0, 0], outputs[0][-12000:] + outputs[1][-12000:]

  # Each process loaded only its half of every global batch of 16 rows.
  for index, output in enumerate(outputs):
    assert re.search(
        rf'process {index} loads rows {8 * index}:{8 * index + 8} of each '
        'global batch of 16', output
    ), output[-3000:]
    assert 'Process %d/2' % index in output
  with open(shared / 'results.json') as f:
    assert json.load(f)['steps'] == 20

  expected = _losses(reference)
  two = _losses(shared)
  assert sorted(two) == [5, 10, 15, 20]
  differences = [abs(two[s] - expected[s]) for s in two]
  print('2 processes vs 1: max |loss difference| over steps 5-20:',
        max(differences))
  assert max(differences) < 1e-5, (two, expected)

  # The 2-process checkpoint of step 20 continues in one process.
  _run(shared, data_dir, 40, 4, tmp_path / 'resumed.log')
  assert 'Resumed from step 20' in open(tmp_path / 'resumed.log').read()
  resumed = _losses(shared)
  for step in range(25, 41, 5):
    assert resumed[step] == pytest.approx(expected[step], abs=1e-5), step
