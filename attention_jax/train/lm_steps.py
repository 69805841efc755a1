"""The loss and evaluation step of a decoder-only model on answer positions.

The diagnostic tasks ask for answers at some positions only; the loss is
cross-entropy there (a batch's 'weights' are 1 at answer positions, 0
elsewhere), with the model's logits at position i read as its prediction of
the answer to the sequence up to i.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax.train import steps


def summed_answer_loss(params, batch, rng, *, model: nn.Module,
                       label_smoothing: float):
  """Summed loss over answer positions and the step's metric sums.

  Args:
    params: model parameters.
    batch: 'inputs', 'targets' [B, L] int32 and 'weights' [B, L] float32.
    rng: dropout key.
    model: the training-mode DecoderOnly.
    label_smoothing: mass moved from the gold token to the others.

  Returns:
    (summed loss, sums of 'loss', 'nll', 'accuracy', 'target_tokens'), as
    steps.train_step expects.
  """
  logits = model.apply({'params': params}, batch['inputs'],
                       rngs={'dropout': rng})
  return steps.weighted_token_sums(logits, batch['targets'], batch['weights'],
                                   label_smoothing)


def eval_step(params, batch, *, model: nn.Module) -> dict[str, jax.Array]:
  """Per-row sums: NLL, correct answers and answers, each [B] float32."""
  logits = model.apply({'params': params}, batch['inputs'])
  _, nll = steps.token_losses(logits, batch['targets'], 0.0)
  weights = batch['weights']
  correct = (jnp.argmax(logits, -1) == batch['targets']) * weights
  return {
      'nll': (nll * weights).sum(-1),
      'correct': correct.sum(-1),
      'answers': weights.sum(-1),
  }
