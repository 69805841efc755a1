"""Diagnostic tasks: generators, solvers, the decoder-only model, training."""

import functools
import json

import jax
import numpy as np
import pytest

from attention_jax import attention
from attention_jax import sharding
from attention_jax.diagnostics import answers
from attention_jax.diagnostics import recall
from attention_jax.diagnostics import selective_copy
from attention_jax.diagnostics import tasks
from attention_jax.train import config_check
from attention_jax.train import optim
from attention_jax.train import steps
from attention_jax.train import train_state
from attention_jax.train import trainer
from attention_jax.train.diagnostic_task import DiagnosticTask
from experiments.configs import mqar

CAUSAL = [n for n in attention.names()
          if attention.get(n).capabilities.causal]


def _config(task='mqar', **data):
  config = mqar.get_config(task)
  config.data.update(dict(vocab_size=32, lengths=(32,), num_items=(4,),
                          max_len=32, valid_examples=32, test_examples=256))
  config.data.update(data)
  return config


def _solve(task, tokens, vocab_size):
  if task == 'selective_copy':
    return selective_copy.solve(tokens)
  first_key = 1 if task == 'mqar' else recall.NOISE_END
  return recall.solve(tokens, first_key,
                      first_key + (vocab_size - first_key) // 2)


@pytest.mark.parametrize('task', list(tasks.TASKS))
def test_targets_are_the_brute_force_answers(task):
  config = _config(task, vocab_size=64, lengths=(24, 64), num_items=(2, 8),
                   max_len=64)
  stream = tasks.TrainStream(tasks.get(task), config.data, 64, seed=3)
  for _ in range(3):
    batch = next(stream)
    for tokens, targets, weights in zip(
        batch['inputs'], batch['targets'], batch['weights']):
      length = int((tokens > 0).sum())
      want_targets, want_weights = _solve(task, tokens[:length],
                                          config.data.vocab_size)
      np.testing.assert_array_equal(targets[:length], want_targets)
      np.testing.assert_array_equal(weights[:length], want_weights)
      assert not targets[length:].any() and not tokens[length:].any()
      assert weights.sum() > 0


@pytest.mark.parametrize('task', list(tasks.TASKS))
def test_a_seed_and_step_determine_the_batch(task):
  config = _config(task, lengths=(16, 32), num_items=(2, 4))
  first = tasks.TrainStream(tasks.get(task), config.data, 8, seed=5)
  batches = [next(first) for _ in range(3)]
  again = tasks.TrainStream(tasks.get(task), config.data, 8, seed=5)
  again.restore({'index': 2, 'seed': 5})
  resumed = next(again)
  for key in batches[2]:
    np.testing.assert_array_equal(resumed[key], batches[2][key])
  other = next(tasks.TrainStream(tasks.get(task), config.data, 8, seed=6))
  assert (other['inputs'] != batches[0]['inputs']).any()
  test = tasks.eval_batches(tasks.get(task), config.data, 'test', 4, 8)
  assert len(test) == 4 * 4 // 8  # 4 settings of 4 sequences, 8 a batch
  for a, b in zip(test, tasks.eval_batches(tasks.get(task), config.data,
                                           'test', 4, 8)):
    np.testing.assert_array_equal(a['inputs'], b['inputs'])


@pytest.mark.parametrize('mechanism', CAUSAL)
def test_decoder_only_model_is_causal(mechanism):
  """Changing tokens j >= 9 leaves the logits at positions < 9 unchanged."""
  config = _config(lengths=(16,), num_items=(2,), max_len=16)
  config.model.attention = mechanism
  config.model.num_decoder_layers = 1
  config.model.emb_dim = config.model.qkv_dim = 16
  config.model.mlp_dim = 16
  config_check.check_config(config)
  task = DiagnosticTask(config)
  model = task.model_class(task.model_config.replace(deterministic=True))
  tokens = jax.random.randint(jax.random.key(0), (2, 16), 1, 32)
  params = model.init(jax.random.key(1), tokens)['params']
  changed = tokens.at[:, 9:].set((tokens[:, 9:] + 7) % 31 + 1)
  before = model.apply({'params': params}, tokens)
  after = model.apply({'params': params}, changed)
  np.testing.assert_allclose(before[:, :9], after[:, :9], atol=1e-6)
  assert not np.allclose(before[:, 9:], after[:, 9:])


def test_softmax_learns_mqar(tmp_path):
  """Bar: >= 0.9 answer accuracy on 256 held-out sequences after 800 steps.

  MQAR with 4 pairs in 32 tokens, vocabulary 32, 2 layers of width 64,
  batch 32; seeds 0, 1 and 2 all reach 1.0 training accuracy by step 500
  (about 20 s on one core).
  """
  config = _config()
  config.batch_size = 32
  config.optimizer.warmup_steps = 50
  task = DiagnosticTask(config)
  model = task.model_class(task.model_config)
  tx, _ = optim.make_optimizer(config)
  # One of the 8 simulated devices: split 8 ways, the 800 small steps take
  # about 7x as long (99 ms against 13 ms a step), and sharding is tested
  # elsewhere.
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  state, _ = train_state.create(model, tx, 0, mesh, 32,
                                sharding.logical_rules(config.mesh), 1)
  step = jax.jit(functools.partial(
      steps.train_step, model=model, label_smoothing=0.0,
      summed_loss=task.summed_loss), donate_argnums=0)
  stream = task.train_stream(config.batch_size, slice(None))
  for _ in range(800):
    batch = next(stream)
    del batch['setting']
    state, _ = step(state, batch)
  task.prepare_eval(mesh, slice(None))
  eval_fn = jax.jit(functools.partial(
      task.eval_step,
      model=task.model_class(task.model_config.replace(deterministic=True))))
  results = task.final_results(eval_fn, state.params, str(tmp_path))
  assert results['test_accuracy'] >= 0.9, results
  # Each test sequence's answers, for the study report's bootstrap.
  _, answered = answers.read(str(tmp_path / 'answers' / 'test.csv'))
  assert answered[:, 0].sum() / answered[:, 1].sum() == pytest.approx(
      results['test_accuracy'])


def test_training_resumes_and_reports_accuracy(tmp_path):
  """launch.py's path: a run stopped after 3 steps and resumed to 6 logs
  the same losses as a run of 6, and writes the accuracies."""
  config = _config(lengths=(16, 32), num_items=(2, 4), test_examples=8,
                   valid_examples=8)
  config.model.num_decoder_layers = 1
  config.batch_size = 8
  config.log_every = config.eval_every = config.checkpoint_every = 1
  config.num_train_steps = 6
  straight = trainer.train_and_evaluate(config, str(tmp_path / 'straight'))
  config.num_train_steps = 3
  trainer.train_and_evaluate(config, str(tmp_path / 'resumed'))
  config.num_train_steps = 6
  resumed = trainer.train_and_evaluate(config, str(tmp_path / 'resumed'))

  def losses(name):
    with open(tmp_path / name / 'metrics.jsonl') as f:
      records = [json.loads(line) for line in f]
    return {r['step']: r['train/loss'] for r in records if 'train/loss' in r}

  assert losses('resumed') == losses('straight')
  # The CPU time of the training steps is counted across the restart.
  for results in (straight, resumed):
    assert 0 < results['train_cpu_seconds'] < 64 * results['train_seconds']
  assert resumed['test_accuracy'] == straight['test_accuracy']
  assert set(resumed['accuracy_by_length']) == {'16', '32'}
  assert set(resumed['accuracy_by_pairs']) == {'2', '4'}
  assert set(resumed['accuracy_by_setting']) == {
      f'length={n},items={d}' for n in (16, 32) for d in (2, 4)}
  # Each test sequence's answers, which the study report resamples, sum to
  # the reported accuracies.
  settings, right_asked = answers.read(
      str(tmp_path / 'resumed' / 'answers' / 'test.csv'))
  assert len(settings) == 4 * config.data.test_examples
  right, asked = right_asked.sum(0)
  assert right / asked == pytest.approx(resumed['test_accuracy'])
  for name, accuracy in resumed['accuracy_by_setting'].items():
    rows = right_asked[[s == name for s in settings]]
    assert rows[:, 0].sum() / rows[:, 1].sum() == pytest.approx(accuracy)


def test_each_process_feeds_its_rows_and_counts_the_whole_batch(
    monkeypatch):
  """With two processes each feeds its half of every evaluation batch, and
  the evaluation's per-row sums come back for the whole batch: the counts
  must read the whole batch's settings (the first half's did not match)."""
  config = _config(lengths=(16, 32), num_items=(2,), test_examples=5,
                   valid_examples=5)
  config.batch_size = 4
  task = DiagnosticTask(config)
  whole = tasks.eval_batches(task._task, config.data, 'test', 5, 4)
  fed = []

  def to_global(local, mesh):
    del mesh
    fed.append(local)
    return len(fed) - 1

  def eval_fn(params, index):
    del params
    # What the replicated sums of the whole batch would be: every answer
    # right except in rows of the first setting.
    batch = whole[index % len(whole)]
    asked = batch['weights'].sum(-1)
    return {'nll': np.zeros(4), 'answers': asked,
            'correct': np.where(batch['setting'] == 0, 0.0, asked)}

  monkeypatch.setattr(sharding, 'to_global', to_global)
  task.prepare_eval(None, slice(0, 2))
  scores = task._scores(eval_fn, None, 'test')
  assert all(len(v) == 2 for batch in fed for v in batch.values())
  assert scores['by_setting'].tolist() == [0.0, 1.0]
  assert len(scores['sequences']) == 10


def test_validation_between_log_steps_reports_the_time_trained(tmp_path):
  # train_seconds grows at log steps only: a validation (or a checkpoint)
  # between them reported the time of the last log step (0.0 before the
  # first one).
  config = _config(test_examples=8, valid_examples=8)
  config.model.num_decoder_layers = 1
  config.batch_size = 8
  config.log_every, config.eval_every, config.checkpoint_every = 4, 2, 2
  config.num_train_steps = 6
  trainer.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  trained = {r['step']: r['train/seconds'] for r in records
             if 'valid/loss' in r}
  assert set(trained) == {2, 4}
  assert 0 < trained[2] < trained[4]
