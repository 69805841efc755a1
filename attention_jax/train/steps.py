"""Pure training and evaluation steps."""

from typing import Any

import flax.linen as nn
from flax import struct
import jax
import jax.numpy as jnp
import optax


class TrainState(struct.PyTreeNode):
  """Everything that changes during training, plus the static optimizer."""

  step: jax.Array
  params: Any
  opt_state: Any
  # Raw uint32 key data; a step's dropout key is fold_in(rng, step).
  rng: jax.Array
  tx: optax.GradientTransformation = struct.field(pytree_node=False)


def token_losses(logits_BxTxV, targets_BxT, label_smoothing: float):
  """Label-smoothed cross-entropy and plain NLL per token, both [B, T].

  Smoothing spreads `label_smoothing` uniformly over the other classes;
  it is computed from the log-softmax directly, never a one-hot [B, T, V].
  """
  log_probs = jax.nn.log_softmax(logits_BxTxV)
  gold = jnp.take_along_axis(log_probs, targets_BxT[..., None], -1)[..., 0]
  nll = -gold
  if not label_smoothing:
    return nll, nll
  others = logits_BxTxV.shape[-1] - 1
  rest = (-jnp.sum(log_probs, -1) - nll) / others
  return (1.0 - label_smoothing) * nll + label_smoothing * rest, nll


def _forward(model: nn.Module, params, batch, rngs=None):
  return model.apply(
      {'params': params},
      batch['inputs'],
      batch['targets'],
      inputs_segmentation=batch['inputs_segmentation'],
      targets_segmentation=batch['targets_segmentation'],
      inputs_position=batch['inputs_position'],
      targets_position=batch['targets_position'],
      rngs=rngs,
  )


def train_step(
    state: TrainState, batch, *, model: nn.Module, label_smoothing: float
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on a packed global batch.

  Args:
    state: the current training state.
    batch: packed arrays (see `attention_jax.data.packing`).
    model: the training-mode Transformer.
    label_smoothing: mass moved from the gold token to the others.

  Returns:
    The new state and scalar metrics of this step.
  """
  dropout_rng = jax.random.fold_in(
      jax.random.wrap_key_data(state.rng), state.step
  )
  weights = (batch['targets_segmentation'] > 0).astype(jnp.float32)
  num_tokens = jnp.maximum(weights.sum(), 1.0)

  def loss_fn(params):
    logits = _forward(model, params, batch, rngs={'dropout': dropout_rng})
    smoothed, nll = token_losses(logits, batch['targets'], label_smoothing)
    correct = jnp.argmax(logits, -1) == batch['targets']
    loss = (smoothed * weights).sum() / num_tokens
    return loss, ((nll * weights).sum(), (correct * weights).sum())

  (loss, (nll_sum, correct_sum)), grads = jax.value_and_grad(
      loss_fn, has_aux=True
  )(state.params)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      opt_state=opt_state,
  )
  metrics = {
      'loss': loss,
      'nll': nll_sum / num_tokens,
      'accuracy': correct_sum / num_tokens,
      'grad_norm': optax.tree.norm(grads),
      'target_tokens': weights.sum(),
  }
  return new_state, metrics


def eval_step(params, batch, *, model: nn.Module) -> dict[str, jax.Array]:
  """Sums of NLL, correct predictions and target tokens over a batch."""
  logits = _forward(model, params, batch)
  weights = (batch['targets_segmentation'] > 0).astype(jnp.float32)
  _, nll = token_losses(logits, batch['targets'], 0.0)
  correct = jnp.argmax(logits, -1) == batch['targets']
  return {
      'nll_sum': (nll * weights).sum(),
      'correct_sum': (correct * weights).sum(),
      'tokens': weights.sum(),
  }
