"""Device mesh, and the sharding of batches and of parameter-like pytrees.

The mesh has two axes: `data` (replicas that each hold whole parameters)
and `fsdp` (devices that split parameters and optimizer state between them
and gather them layer by layer). The batch is split over both. Which
parameter dimensions go to which mesh axis is decided by `config.mesh.rules`
from the logical names the model declares (see `partitioning.py`).
"""

import math

from absl import logging
import flax.linen as nn
import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np

from attention_jax import partitioning

DATA_AXIS = 'data'
FSDP_AXIS = 'fsdp'
MESH_AXES = (DATA_AXIS, FSDP_AXIS)


def mesh_shape(
    mesh_config: ml_collections.ConfigDict, num_devices: int
) -> tuple[int, int]:
  """(data, fsdp) sizes; one of them may be -1, meaning "the rest".

  Raises:
    ValueError: naming the fields when they do not multiply to the devices.
  """
  sizes = [mesh_config[axis] for axis in MESH_AXES]
  fields = ' × '.join(f'config.mesh.{a}={s}' for a, s in zip(MESH_AXES, sizes))
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(
        f'{fields}: each size must be positive, and at most one may be -1 '
        '("the rest of the devices").'
    )
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(
          f'{fields} cannot cover the {num_devices} devices: {num_devices} is '
          f'not divisible by {known}; choose sizes that divide it.'
      )
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(
        f'{fields} needs {math.prod(sizes)} devices, but this run has '
        f'{num_devices}; make the product equal the device count, or set one '
        'size to -1.'
    )
  return sizes[0], sizes[1]


def logical_rules(mesh_config: ml_collections.ConfigDict) -> dict[str, str]:
  """Logical parameter axis -> mesh axis ('' replicates), checked.

  Raises:
    ValueError: for an unknown logical name or mesh axis.
  """
  rules = dict(mesh_config.rules)
  for name, axis in rules.items():
    if name not in partitioning.NAMES:
      raise ValueError(
          f'config.mesh.rules.{name}: the model has no parameter axis '
          f'{name!r}; its axes are: {", ".join(partitioning.NAMES)}.'
      )
    if axis and axis not in MESH_AXES:
      raise ValueError(
          f'config.mesh.rules.{name}={axis!r} is not a mesh axis; use one of '
          f'{", ".join(MESH_AXES)}, or \'\' to replicate.'
      )
  return rules


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
  """The (data, fsdp) mesh over `devices`, by default all of all processes."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  return Mesh(mesh_utils.create_device_mesh(shape, devices=devices), MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows of a batch split over all devices, data and fsdp alike."""
  return NamedSharding(mesh, P(MESH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def process_rows(mesh: Mesh, global_rows: int) -> slice:
  """The contiguous rows of a global batch that this process's devices hold.

  Each process loads only these rows; `to_global` assembles them.
  """
  shards = batch_sharding(mesh).addressable_devices_indices_map((global_rows,))
  starts = sorted(
      {index[0].indices(global_rows)[:2] for index in shards.values()}
  )
  for (_, stop), (start, _) in zip(starts, starts[1:]):
    if stop != start:
      raise ValueError(
          f'This process holds rows {starts} of each batch, which are not '
          'contiguous; build the mesh with make_mesh.'
      )
  return slice(starts[0][0], starts[-1][1])


def to_global(local_batch: dict[str, np.ndarray], mesh: Mesh):
  """Assembles each process's rows into one batch-sharded global array."""
  sharding = batch_sharding(mesh)
  return {
      name: jax.make_array_from_process_local_data(sharding, value)
      for name, value in local_batch.items()
  }


def _mesh_spec(shape, logical: P, rules: dict[str, str], mesh: Mesh,
               unsplit: list[str], path: str) -> P:
  """Mesh axes for one leaf; dimensions the axis does not divide replicate."""
  axes = []
  for size, name in zip(shape, tuple(logical) + (None,) * len(shape)):
    axis = (rules.get(name) or None) if name else None
    if axis and size % mesh.shape[axis]:
      unsplit.append(f'{path} ({name}={size}, {axis}={mesh.shape[axis]})')
      axis = None
    axes.append(axis)
  return P(*axes)


def named_shardings(boxed, mesh: Mesh, rules: dict[str, str]):
  """The `NamedSharding` of each leaf of a pytree of boxed abstract arrays.

  Args:
    boxed: e.g. `jax.eval_shape` of a model's init, its leaves still boxed
      with their logical axis names (`nn.Partitioned`); unnamed leaves
      replicate.
    mesh: the device mesh.
    rules: logical axis name -> mesh axis, as `logical_rules` returns.

  Returns:
    Shardings with the structure of `nn.unbox(boxed)`. A dimension the mesh
    axis does not divide is replicated instead (logged).
  """
  unsplit = []
  shardings = jax.tree_util.tree_map_with_path(
      lambda path, leaf, spec: NamedSharding(
          mesh,
          _mesh_spec(leaf.shape, spec, rules, mesh, unsplit,
                     jax.tree_util.keystr(path)),
      ),
      nn.unbox(boxed),
      nn.get_partition_spec(boxed),
  )
  if unsplit:
    logging.info(
        'Replicated instead of split (size not divisible by the mesh axis): '
        '%s', '; '.join(unsplit),
    )
  return shardings
