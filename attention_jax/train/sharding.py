"""Device mesh, shardings, and sharded creation of the training state."""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

from attention_jax.train.steps import TrainState

DATA_AXIS = 'data'


def make_mesh() -> Mesh:
  """A 1-D mesh over every device of every process, batch on `data`."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_global(local_batch: dict[str, np.ndarray], mesh: Mesh):
  """Assembles each process's rows into one batch-sharded global array."""
  sharding = batch_sharding(mesh)
  return {
      name: jax.make_array_from_process_local_data(sharding, value)
      for name, value in local_batch.items()
  }


def _state_initializer(model: nn.Module, tx: optax.GradientTransformation,
                       max_len: int):
  def init(seed):
    init_rng, dropout_rng = jax.random.split(jax.random.key(seed))
    dummy = jnp.ones((1, max_len), jnp.int32)
    params = model.init(init_rng, dummy, dummy)['params']
    return TrainState(
        step=jnp.array(0, jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(dropout_rng),
        tx=tx,
    )

  return init


def abstract_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    seed: int,
    mesh: Mesh,
    max_len: int,
) -> tuple[TrainState, TrainState]:
  """Shapes of the training state and the sharding of each leaf."""
  abstract = jax.eval_shape(_state_initializer(model, tx, max_len), seed)
  return abstract, jax.tree.map(lambda _: replicated(mesh), abstract)


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    seed: int,
    mesh: Mesh,
    max_len: int,
) -> tuple[TrainState, TrainState]:
  """Initialises the state directly into its sharding on the mesh.

  The shapes come from `jax.eval_shape`, so no device ever holds an
  unsharded copy of the state.

  Returns:
    (state, shardings) where shardings is a pytree of `NamedSharding`s.
  """
  _, shardings = abstract_train_state(model, tx, seed, mesh, max_len)
  init = _state_initializer(model, tx, max_len)
  return jax.jit(init, out_shardings=shardings)(seed), shardings
