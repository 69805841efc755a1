"""Performer FAVOR+ attention (Choromanski et al., 2021).

Linear attention (see linear.py) whose features estimate the softmax kernel.
With x = q / d^(1/4) (keys alike) and m random vectors w_r,

  phi(x)_r = exp(w_r^T x - |x|^2 / 2) / sqrt(m),
  E[phi(q).phi(k)] = exp(q.k / sqrt(d)),

so the attention approximates softmax attention, and the approximation
tightens as m = num_random_features grows. The w_r are orthogonal random
features: Gaussian d x d blocks made orthogonal, stacked to m rows, each row
rescaled to a chi(d)-distributed length as a Gaussian vector would have.

The projection is not a parameter: it is drawn from a seed derived from the
module's path, so one layer's training pass, evaluation and decoding all see
the same features without storing or checkpointing them, no optimiser
touches them (weight decay would shrink a frozen parameter), and different
layers draw different ones. It stays fixed for the whole training (the
paper's optional periodic redrawing is not done) and is shared by the heads
of a layer.

Stability: exponents are shifted by a maximum before exp, which only
multiplies features by positive factors that cancel in the attention ratio:
per query, its maximum over the features; for keys, the maximum over all
features and keys of the key's segment (one factor for every key a query
sees). Shifts are constants for differentiation. In decoding, keys arrive
one at a time, so the running sums are kept relative to the largest shift
seen so far (see `linear.Linear`).
"""

import dataclasses
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax.attention import linear
from attention_jax.attention import registry


def orthogonal_random_features(seed: int, num_features: int, depth: int):
  """Block-orthogonal Gaussian projection, [num_features, depth].

  Drawn with NumPy when the model is traced, so it is a constant of the
  compiled program rather than work repeated at every step.
  """
  rng = np.random.default_rng(seed)
  num_blocks = -(-num_features // depth)
  q_NxDxD, r_NxDxD = np.linalg.qr(
      rng.standard_normal((num_blocks, depth, depth))
  )
  # QR leaves the signs of R's diagonal arbitrary; fixing them positive makes
  # Q uniformly (Haar) distributed, without which the kernel estimate is
  # biased.
  signs_Nx1xD = np.sign(np.diagonal(r_NxDxD, axis1=1, axis2=2))[:, None]
  columns_NxDxD = q_NxDxD * signs_Nx1xD
  directions_MxD = columns_NxDxD.transpose(0, 2, 1).reshape(-1, depth)
  lengths_M = np.linalg.norm(
      rng.standard_normal((num_features, depth)), axis=-1
  )
  return (directions_MxD[:num_features] * lengths_M[:, None]).astype(
      np.float32
  )


def softmax_kernel_logits(x_BxLxHxD, projection_MxD):
  """Exponents w_r^T x - |x|^2 / 2 of the features, x scaled by d^(-1/4)."""
  x_BxLxHxD = x_BxLxHxD * x_BxLxHxD.shape[-1] ** -0.25
  return (
      jnp.einsum('blhd,md->blhm', x_BxLxHxD, projection_MxD)
      - 0.5 * jnp.sum(jnp.square(x_BxLxHxD), -1, keepdims=True)
  )


def segment_max(x_BxLxH, segment_ids_BxL):
  """Maximum of x over the positions sharing each position's segment id."""

  def one_row(x_LxH, ids_L):
    # An id's slot is the index of its first occurrence among sorted ids.
    slot_L = jnp.searchsorted(jnp.sort(ids_L), ids_L)
    per_slot_LxH = jax.ops.segment_max(x_LxH, slot_L, num_segments=len(ids_L))
    return per_slot_LxH[slot_L]

  return jax.vmap(one_row)(x_BxLxH, segment_ids_BxL)


def favor_query_features(query_BxLxHxD, projection_MxD):
  """Query features, each query scaled by its own positive factor."""
  logits_BxLxHxM = softmax_kernel_logits(query_BxLxHxD, projection_MxD)
  shift = jax.lax.stop_gradient(jnp.max(logits_BxLxHxM, -1, keepdims=True))
  return jnp.exp(logits_BxLxHxM - shift) / jnp.sqrt(projection_MxD.shape[0])


def favor_key_features(key_BxLxHxD, projection_MxD, segment_ids_BxL):
  """Key features scaled by one factor per segment, and that factor's log.

  Returns:
    (features [B, L, H, M], shift [B, L, H]): features * exp(shift) are the
    unshifted features.
  """
  logits_BxLxHxM = softmax_kernel_logits(key_BxLxHxD, projection_MxD)
  shift_BxLxH = jax.lax.stop_gradient(
      segment_max(jnp.max(logits_BxLxHxM, -1), segment_ids_BxL)
  )
  features = jnp.exp(logits_BxLxHxM - shift_BxLxH[..., None])
  return features / jnp.sqrt(projection_MxD.shape[0]), shift_BxLxH


@dataclasses.dataclass(frozen=True)
class PerformerOptions:
  # Random features m; the softmax estimate tightens as m grows.
  num_random_features: int = 256
  # Positions per chunk of the running sums (see linear.py).
  chunk_size: int = 512

  def __post_init__(self):
    if self.num_random_features < 1:
      raise ValueError(
          f'num_random_features={self.num_random_features} must be at least '
          '1.')
    if self.chunk_size < 1:
      raise ValueError(f'chunk_size={self.chunk_size} must be at least 1.')


def layer_projection(path, num_features: int, head_dim: int):
  """The fixed random features of the layer at module `path`."""
  # crc32, unlike hash(), is the same in every process and run.
  seed = zlib.crc32('/'.join(path).encode())
  return orthogonal_random_features(seed, num_features, head_dim)


@registry.register('performer')
class Performer(linear.Linear):
  """FAVOR+ attention: linear attention with positive orthogonal features.

  Decoding state as `linear.Linear` with M = num_random_features, plus
  'key_log_scale' [B, H] in self-attention.
  """

  Options = PerformerOptions
  TEST_OPTIONS = {'num_random_features': 16, 'chunk_size': 3}
  scaled_key_features = True

  def num_features(self, head_dim):
    return self.options.num_random_features

  def _projection(self, module, head_dim):
    return layer_projection(module.path, self.options.num_random_features,
                            head_dim)

  def query_features(self, module, query_BxLxHxD):
    return favor_query_features(
        query_BxLxHxD, self._projection(module, query_BxLxHxD.shape[-1]))

  def key_features(self, module, key_BxLxHxD, segment_ids_BxL):
    return favor_key_features(
        key_BxLxHxD, self._projection(module, key_BxLxHxD.shape[-1]),
        segment_ids_BxL)

  def reference_features(self, query, key, path):
    # phi(x) = exp(w^T x - |x|^2 / 2) / sqrt(m), x = q / d^(1/4) (eq. 7 of
    # Choromanski et al. with h(x) = exp(-|x|^2 / 2)).
    projection = layer_projection(path, self.options.num_random_features,
                                  query.shape[-1])

    def phi(x):
      x = x / x.shape[-1] ** 0.25
      exponent = x @ projection.T - 0.5 * jnp.sum(x * x, -1, keepdims=True)
      return jnp.exp(exponent) / np.sqrt(len(projection))

    return phi(query), phi(key)
