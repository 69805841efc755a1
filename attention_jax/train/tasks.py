"""What the trainer trains: translation or a diagnostic task, by config.task.

A task supplies the trainer's data and scoring; the loop, checkpoints,
metrics and results are the trainer's. Each task class has
  model_class, num_inputs      the model and how many token arrays it takes
  summed_loss, eval_step       pure functions for steps.train_step and jit
  model_config                 the TransformerConfig of the config
  train_stream(batch_size, rows)       resumable: state() / restore()
  prepare_eval(mesh, rows)             builds the evaluation sets once
  valid_scores(eval_fn, params, train_seconds) -> (scalars, log line)
  final_results(eval_fn, params, workdir) -> results dict
  final_scalars(results), summary(results)
"""

import ml_collections

from attention_jax.diagnostics import tasks as diagnostic_tasks
from attention_jax.train.diagnostic_task import DiagnosticTask
from attention_jax.train.translation_task import TranslationTask


def name(config: ml_collections.ConfigDict) -> str:
  """config.task; configs written before tasks existed are translation."""
  return config.get('task', 'translation')


def is_decoder_only(config: ml_collections.ConfigDict) -> bool:
  return name(config) != 'translation'


def for_config(config: ml_collections.ConfigDict, workdir: str,
               resuming: bool) -> TranslationTask | DiagnosticTask:
  """The task of `config`, with its data loaded or prepared.

  Raises:
    ValueError: for an unknown config.task, naming the valid ones.
  """
  if name(config) == 'translation':
    return TranslationTask(config, workdir, resuming)
  diagnostic_tasks.get(name(config))
  return DiagnosticTask(config)
