"""The mean of the last saved checkpoints' parameters, for the final eval.

Vaswani et al. (2017) evaluate base models on the average of the last 5
checkpoints. The sum is kept in float32 with the parameters' own shardings,
and checkpoints are restored one at a time, so at most two copies of the
parameters exist beside the training state.
"""

import functools

from absl import logging
import jax
import jax.numpy as jnp

from attention_jax.train.checkpoint import CheckpointRestoreError
from attention_jax.train.checkpoint import Checkpointer


@functools.partial(jax.jit, donate_argnums=0)
def _add(total, params):
  return jax.tree.map(lambda t, p: t + p.astype(jnp.float32), total, params)


def average_last(
    checkpointer: Checkpointer, count: int, abstract_params, shardings
) -> tuple[list[int], object]:
  """The mean parameters of the newest `count` checkpoints, and their steps.

  Fewer are averaged, with a warning naming them, when fewer exist (a run
  cut short by max_train_seconds); the returned steps say which were used.

  Args:
    checkpointer: the run's checkpoints.
    count: how many of the newest to average.
    abstract_params: shapes and dtypes of the parameters.
    shardings: their shardings, which the mean has too.

  Returns:
    (the averaged steps, oldest first; the mean, in the parameters' dtypes).

  Raises:
    ValueError: there is no checkpoint.
    CheckpointRestoreError: one of the steps does not restore, naming it.
  """
  steps = checkpointer.all_steps()[-count:]
  if not steps:
    raise ValueError(f'No checkpoint in {checkpointer.directory} to average.')
  if len(steps) < count:
    logging.warning(
        'config.eval.average_checkpoints=%d, but only %d checkpoint(s) exist '
        '(steps %s); averaging those.', count, len(steps), steps)
  total = jax.jit(
      lambda: jax.tree.map(
          lambda x: jnp.zeros(x.shape, jnp.float32), abstract_params),
      out_shardings=shardings,
  )()
  for step in steps:
    try:
      params = checkpointer.restore_params(step, abstract_params, shardings)
    except Exception as e:  # pylint: disable=broad-except
      # Orbax and TensorStore raise many types for a damaged file.
      why = f'{type(e).__name__}: {e}'.splitlines()[0]
      raise CheckpointRestoreError(
          f'Checkpoint {checkpointer.path(step)} does not restore ({why}), '
          f'so checkpoints {steps} cannot be averaged. Set '
          'config.eval.average_checkpoints=0 to evaluate the last one alone.'
      ) from e
    total = _add(total, params)
  mean = jax.jit(
      lambda t: jax.tree.map(
          lambda s, x: (s / len(steps)).astype(x.dtype), t, abstract_params),
      out_shardings=shardings,
  )(total)
  logging.info('Evaluating the mean parameters of checkpoints %s.', steps)
  return steps, mean
