"""Creation of the training state directly into its sharding on the mesh."""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import optax

from attention_jax import sharding
from attention_jax.train.steps import TrainState


def _state_initializer(model: nn.Module, tx: optax.GradientTransformation,
                       max_len: int, num_inputs: int):
  """Builds the state with parameters still boxed with their axis names.

  The optimizer's moments are created from the boxed parameters, so they
  carry the same names and are sharded like the parameters they track.
  """

  def init(seed):
    init_rng, dropout_rng = jax.random.split(jax.random.key(seed))
    dummy = jnp.ones((1, max_len), jnp.int32)
    params = model.init(init_rng, *[dummy] * num_inputs)['params']
    return TrainState(
        step=jnp.array(0, jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(dropout_rng),
        tx=tx,
    )

  return init


def abstract(
    model: nn.Module,
    tx: optax.GradientTransformation,
    seed: int,
    mesh: Mesh,
    max_len: int,
    rules: dict[str, str],
    num_inputs: int = 2,
) -> tuple[TrainState, TrainState]:
  """Shapes of the training state and the sharding of each leaf.

  `num_inputs` is the count of [B, max_len] token arrays the model takes:
  2 for the encoder-decoder (source, target), 1 for a decoder-only model.
  """
  boxed = jax.eval_shape(
      _state_initializer(model, tx, max_len, num_inputs), seed)
  return nn.unbox(boxed), sharding.named_shardings(boxed, mesh, rules)


def create(
    model: nn.Module,
    tx: optax.GradientTransformation,
    seed: int,
    mesh: Mesh,
    max_len: int,
    rules: dict[str, str],
    num_inputs: int = 2,
) -> tuple[TrainState, TrainState]:
  """Initialises the state directly into its sharding on the mesh.

  The shapes come from `jax.eval_shape`, so no device ever holds an
  unsharded copy of the state.

  Returns:
    (state, shardings) where shardings is a pytree of `NamedSharding`s.
  """
  _, shardings = abstract(model, tx, seed, mesh, max_len, rules, num_inputs)
  init = _state_initializer(model, tx, max_len, num_inputs)
  return jax.jit(
      lambda s: nn.unbox(init(s)), out_shardings=shardings
  )(seed), shardings
