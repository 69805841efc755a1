"""The diagnostic tasks (attention_jax/diagnostics) as a training task.

The trainer's task interface (see train/tasks.py) for config.task = 'mqar',
'selective_copy' or 'noisy_recall': a decoder-only model trained with
cross-entropy on the answer positions of generated sequences, scored by
answer accuracy on fixed validation and test sets at every (length, item
count) setting of config.data.
"""

import math
import os

import jax
import ml_collections
import numpy as np

from attention_jax import progress
from attention_jax import run_records
from attention_jax import sharding
from attention_jax.diagnostics import answers
from attention_jax.diagnostics import tasks
from attention_jax.model import from_config
from attention_jax.model.decoder_only import DecoderOnly
from attention_jax.train import lm_steps


class DiagnosticTask:
  """Generated sequences of one diagnostic task, and their accuracy."""

  model_class = DecoderOnly
  num_inputs = 1
  summed_loss = staticmethod(lm_steps.summed_answer_loss)
  eval_step = staticmethod(lm_steps.eval_step)

  def __init__(self, config: ml_collections.ConfigDict):
    self._config = config
    self._task = tasks.get(config.task)
    self._grid = tasks.settings(config.data)
    self.model_config = from_config.transformer_config(
        config, config.data.vocab_size)

  def train_stream(self, batch_size: int, rows: slice) -> tasks.TrainStream:
    return tasks.TrainStream(self._task, self._config.data, batch_size,
                             self._config.seed, rows)

  def prepare_eval(self, mesh, rows: slice) -> None:
    """The fixed validation and test sets of every setting.

    Every process generates whole batches (cheap) and feeds its `rows` of
    each; the evaluation's per-row sums come back for the whole batch, so
    the bookkeeping reads the whole batch's settings and weights.
    """
    config = self._config
    self._mesh = mesh
    self._rows = rows
    self._splits = {
        split: tasks.eval_batches(self._task, config.data, split, examples,
                                  config.batch_size)
        for split, examples in (('valid', config.data.valid_examples),
                                ('test', config.data.test_examples))}

  def _scores(self, eval_fn, params, split: str) -> dict:
    """Loss and accuracies of `split`, overall and per setting, and each
    test sequence's setting index, correct answers and answers
    ('sequences', [N, 3] int, in the split's fixed order)."""
    # Per setting: NLL, correct answers, answers, sequences all right, rows.
    sums = np.zeros((len(self._grid), 5))
    sequences = []
    for batch in self._splits[split]:
      rows = jax.device_get(eval_fn(params, sharding.to_global(
          {k: v[self._rows] for k, v in batch.items() if k != 'setting'},
          self._mesh)))
      row_sums = np.stack([rows['nll'], rows['correct'], rows['answers'],
                           rows['correct'] == rows['answers'],
                           np.ones_like(rows['nll'])], -1)
      # Rows of weight 0 only fill up the last batch.
      asked = batch['weights'].sum(-1) > 0
      np.add.at(sums, batch['setting'][asked], row_sums[asked])
      sequences.append(np.stack([batch['setting'], rows['correct'],
                                 rows['answers']], -1)[asked])
    total = sums.sum(0)
    loss = total[0] / max(total[2], 1.0)
    return {
        'sequences': np.concatenate(sequences).round().astype(np.int64),
        'loss': loss,
        'perplexity': math.exp(min(loss, 50.0)),
        'accuracy': total[1] / max(total[2], 1.0),
        'sequence_accuracy': total[3] / max(total[4], 1.0),
        'by_setting': sums[:, 1] / np.maximum(sums[:, 2], 1.0),
        'sequences_by_setting': sums[:, 3] / np.maximum(sums[:, 4], 1.0),
    }

  def valid_scores(self, eval_fn, params,
                   train_seconds: float) -> tuple[dict[str, float], str]:
    """Periodic validation: (scalars named valid/..., a log line)."""
    scores = self._scores(eval_fn, params, 'valid')
    scalars = {f'valid/{k}': float(v) for k, v in scores.items()
               if np.ndim(v) == 0}
    line = 'valid loss %.3f | answer accuracy %.3f | trained %s' % (
        scores['loss'], scores['accuracy'],
        progress.format_seconds(train_seconds))
    return scalars, line

  def final_results(self, eval_fn, params, workdir: str) -> dict:
    """Validation loss, and test accuracy overall and per setting.

    Returns:
      eval_loss, eval_accuracy (validation, answer positions);
      test_accuracy (answers right), test_sequence_accuracy (sequences
      with every answer right); accuracy_by_setting and
      sequence_accuracy_by_setting keyed by 'length=L,items=D';
      accuracy_by_length and accuracy_by_<item> ('pairs' or 'tokens')
      keyed by the value, each the mean over the settings that have it.
      Each test sequence's answers go to `workdir`/answers/test.csv
      (setting, correct, answers; one row per sequence in the test set's
      fixed order), which the study report resamples for its paired
      bootstrap.
    """
    valid = self._scores(eval_fn, params, 'valid')
    test = self._scores(eval_fn, params, 'test')
    if jax.process_index() == 0:
      os.makedirs(os.path.join(workdir, 'answers'), exist_ok=True)
      run_records.write_text(
          os.path.join(workdir, 'answers', 'test.csv'),
          answers.to_csv(test['sequences'], [s.name for s in self._grid]))
    by_setting = dict(zip((s.name for s in self._grid),
                          test['by_setting'].tolist()))

    def mean_by(attribute: str) -> dict[str, float]:
      values = dict.fromkeys(getattr(s, attribute) for s in self._grid)
      return {str(v): float(np.mean(
          [a for s, a in zip(self._grid, test['by_setting'])
           if getattr(s, attribute) == v])) for v in values}

    return {
        'task': self._task.name,
        'eval_loss': float(valid['loss']),
        'eval_accuracy': float(valid['accuracy']),
        'test_loss': float(test['loss']),
        'test_accuracy': float(test['accuracy']),
        'test_sequence_accuracy': float(test['sequence_accuracy']),
        'accuracy_by_setting': by_setting,
        'sequence_accuracy_by_setting': dict(zip(
            by_setting, test['sequences_by_setting'].tolist())),
        'accuracy_by_length': mean_by('length'),
        f'accuracy_by_{self._task.item}': mean_by('num_items'),
    }

  @staticmethod
  def final_scalars(results: dict) -> dict:
    """The results also logged to metrics.jsonl."""
    return {k: results[k] for k in ('test_accuracy', 'test_sequence_accuracy')}

  @staticmethod
  def summary(results: dict) -> str:
    return ('%s test answer accuracy %.3f, sequences all right %.3f, valid '
            'loss %.3f' % (results['task'], results['test_accuracy'],
                           results['test_sequence_accuracy'],
                           results['eval_loss']))
