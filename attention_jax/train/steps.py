"""Pure training and evaluation steps."""

import functools
from typing import Any, Callable

import flax.linen as nn
from flax import struct
import jax
import jax.numpy as jnp
import optax

from attention_jax import random_bits

# Dropout masks without Threefry's loop on the CPU: same bits, faster.
random_bits.unroll_threefry_on_cpu()


class TrainState(struct.PyTreeNode):
  """Everything that changes during training, plus the static optimizer."""

  step: jax.Array
  params: Any
  opt_state: Any
  # Raw uint32 key data; a step's dropout key is fold_in(rng, step).
  rng: jax.Array
  tx: optax.GradientTransformation = struct.field(pytree_node=False)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def token_losses(logits_BxTxV, targets_BxT, label_smoothing: float):
  """Label-smoothed cross-entropy and plain NLL per token, both [B, T], nats.

  Smoothing spreads `label_smoothing` uniformly over the other V - 1
  classes (Szegedy et al., 2016, sec. 7, with the gold class excluded from
  the uniform part); it is computed from the log-softmax directly, never a
  one-hot [B, T, V].

  The gradient is written out (a `custom_vjp`) rather than traced through
  log_softmax and the gather: d loss / d logit_v = p_v - q_v, with p the
  softmax and q the smoothed target distribution (1 - label_smoothing at
  the gold class, label_smoothing / (V - 1) elsewhere; q is one-hot for the
  NLL). XLA then writes the [B, T, V] gradient in one pass, in the layout
  the tied output embedding's gradient reads; traced, it was a scatter for
  the gather's transpose plus a transposed copy of the whole [B, T, V]
  array (18% of a `bible` training step on the CPU). Values are those of
  the traced form bit for bit; gradients agree to float32 rounding.
  """
  return _token_losses_forward(logits_BxTxV, targets_BxT, label_smoothing)[0]


def _token_losses_forward(logits_BxTxV, targets_BxT, label_smoothing):
  log_probs = jax.nn.log_softmax(logits_BxTxV)
  gold = jnp.take_along_axis(log_probs, targets_BxT[..., None], -1)[..., 0]
  nll = -gold
  # The log-normaliser per token, all the backward pass needs besides the
  # logits: log p_v = logit_v - log_normaliser.
  log_normaliser = logits_BxTxV[..., 0] - log_probs[..., 0]
  residuals = (logits_BxTxV, targets_BxT, log_normaliser)
  if not label_smoothing:
    return (nll, nll), residuals
  others = logits_BxTxV.shape[-1] - 1
  rest = (-jnp.sum(log_probs, -1) - nll) / others
  smoothed = (1.0 - label_smoothing) * nll + label_smoothing * rest
  return (smoothed, nll), residuals


def _token_losses_backward(label_smoothing, residuals, cotangents):
  logits, targets, log_normaliser = residuals
  d_smoothed, d_nll = cotangents
  probs = jnp.exp(logits - log_normaliser[..., None])
  vocab = jax.lax.broadcasted_iota(targets.dtype, logits.shape, logits.ndim - 1)
  is_gold = vocab == targets[..., None]
  others = logits.shape[-1] - 1
  smoothed_target = jnp.where(is_gold, 1.0 - label_smoothing,
                              label_smoothing / others)
  d_logits = (d_smoothed[..., None] * (probs - smoothed_target)
              + d_nll[..., None] * (probs - is_gold))
  return d_logits.astype(logits.dtype), None


token_losses.defvjp(_token_losses_forward, _token_losses_backward)


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


def _micro_batches(batch, count: int):
  """[B, ...] -> [count, B / count, ...], micro-batch i = rows i, i+count, ...

  Strided rather than contiguous rows, so that every device keeps holding
  an equal share of each micro-batch of the batch-sharded rows.
  """
  return jax.tree.map(
      lambda x: jnp.swapaxes(
          x.reshape(x.shape[0] // count, count, *x.shape[1:]), 0, 1
      ),
      batch,
  )


def summed_token_loss(params, batch, rng, *, model, label_smoothing):
  """Sum of a translation batch's token losses, and the sums the step's
  metrics are made of ('loss', 'nll', 'accuracy', 'target_tokens')."""
  logits = _forward(model, params, batch, rngs={'dropout': rng})
  weights = (batch['targets_segmentation'] > 0).astype(jnp.float32)
  return weighted_token_sums(logits, batch['targets'], weights,
                             label_smoothing)


def weighted_token_sums(logits_BxTxV, targets_BxT, weights_BxT,
                        label_smoothing):
  """(summed smoothed loss, sums of 'loss', 'nll', 'accuracy' and
  'target_tokens') over the positions weighted 1; what `train_step`'s
  summed_loss returns. Losses in nats."""
  smoothed, nll = token_losses(logits_BxTxV, targets_BxT, label_smoothing)
  correct = jnp.argmax(logits_BxTxV, -1) == targets_BxT
  sums = {
      'loss': (smoothed * weights_BxT).sum(),
      'nll': (nll * weights_BxT).sum(),
      'accuracy': (correct * weights_BxT).sum(),
      'target_tokens': weights_BxT.sum(),
  }
  return sums['loss'], sums


def train_step(
    state: TrainState,
    batch,
    *,
    model: nn.Module,
    label_smoothing: float,
    micro_batches: int = 1,
    summed_loss: Callable = summed_token_loss,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on a packed global batch.

  Gradients of summed token losses are accumulated over `micro_batches`
  slices of the batch and divided by the batch's token count once, so the
  update equals that of the whole batch at once while only one micro-batch's
  activations are alive at a time.

  Args:
    state: the current training state.
    batch: packed arrays (see `attention_jax.data.packing`).
    model: the training-mode Transformer.
    label_smoothing: mass moved from the gold token to the others.
    micro_batches: slices the batch is processed in; divides its rows.
    summed_loss: (params, batch, rng, *, model, label_smoothing) -> (summed
      loss, sums), as `summed_token_loss` (the default, translation) and
      lm_steps.summed_answer_loss (the diagnostic tasks).

  Returns:
    The new state and scalar metrics of this step.
  """
  dropout_rng = jax.random.fold_in(
      jax.random.wrap_key_data(state.rng), state.step
  )
  grad_fn = jax.grad(
      functools.partial(
          summed_loss, model=model, label_smoothing=label_smoothing
      ),
      has_aux=True,
  )
  if micro_batches == 1:
    grads, sums = grad_fn(state.params, batch, dropout_rng)
  else:
    def accumulate(totals, micro_and_index):
      micro, index = micro_and_index
      step_totals = grad_fn(
          state.params, micro, jax.random.fold_in(dropout_rng, index)
      )
      return jax.tree.map(jnp.add, totals, step_totals), None

    slices = _micro_batches(batch, micro_batches)
    first = jax.tree.map(lambda x: x[0], slices)
    zeros = jax.tree.map(
        jnp.zeros_like,
        jax.eval_shape(grad_fn, state.params, first, dropout_rng),
    )
    (grads, sums), _ = jax.lax.scan(
        accumulate, zeros, (slices, jnp.arange(micro_batches))
    )
  num_tokens = jnp.maximum(sums['target_tokens'], 1.0)
  grads = jax.tree.map(lambda g: g / num_tokens, grads)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      opt_state=opt_state,
  )
  metrics = {
      name: sums[name] / num_tokens for name in ('loss', 'nll', 'accuracy')
  }
  metrics.update(
      grad_norm=optax.tree.norm(grads), target_tokens=sums['target_tokens']
  )
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
