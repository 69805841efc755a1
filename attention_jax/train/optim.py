"""Adam with linear warm-up, inverse-square-root decay and clipping."""

import jax.numpy as jnp
import ml_collections
import optax


def rsqrt_schedule(peak: float, warmup_steps: int) -> optax.Schedule:
  """Linear rise to `peak` over `warmup_steps`, then peak * sqrt(warmup/step).

  This is Vaswani et al.'s schedule with the d_model^-0.5 factor folded into
  `peak`, so the learning rate is set directly by the config.
  """

  def schedule(step):
    step = jnp.maximum(step, 1).astype(jnp.float32)
    warmup = jnp.float32(max(warmup_steps, 1))
    return peak * jnp.minimum(step / warmup, jnp.sqrt(warmup / step))

  return schedule


def applied_learning_rate(schedule: optax.Schedule, step: int) -> float:
  """The learning rate that update number `step` (counted from 1) applied.

  optax evaluates the schedule at its update count before incrementing it,
  so the first update uses schedule(0) and update k uses schedule(k - 1).
  """
  return float(schedule(step - 1))


def make_optimizer(
    config: ml_collections.ConfigDict,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer for `config.optimizer` and its learning-rate schedule."""
  opt = config.optimizer
  schedule = rsqrt_schedule(opt.learning_rate, opt.warmup_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(opt.grad_clip_norm),
      optax.adamw(
          schedule,
          b1=opt.beta1,
          b2=opt.beta2,
          eps=opt.eps,
          weight_decay=opt.weight_decay,
      ),
  )
  return tx, schedule
