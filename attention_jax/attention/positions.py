"""Position schemes, chosen by name from a registry like the mechanisms.

`config.model.position_scheme` picks one scheme for the whole model; its
options live under `config.model.position_options.<name>`. Where a scheme
acts decides what it needs from the attention mechanism:
  'embedding': added to the token embeddings by the Transformer
    ('sinusoidal', Vaswani et al., 2017; 'learned'); attention never sees
    it, so every mechanism honours it.
  'rotation': rotates queries and keys by their positions inside
    self-attention ('rope', Su et al., 2021); the mechanism must declare it
    in `Capabilities.position_schemes`.
  'score_bias': adds a bias to the query-key scores of self-attention
    ('alibi', Press et al., 2022; 'relative_bias', Raffel et al., 2020);
    the mechanism must declare it and take a score bias.
In-attention schemes act in self-attention only: cross-attention compares two
sequences whose positions are not comparable.
"""

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from attention_jax import partitioning as part
from attention_jax.attention import base
from attention_jax.attention import registry

SCHEMES = registry.Registry('position scheme', 'config.model.position_options')
EMBEDDING, ROTATION, SCORE_BIAS = 'embedding', 'rotation', 'score_bias'


class PositionScheme:
  """Base of every position scheme; subclasses override where they act."""

  Options: ClassVar[type] = base.NoOptions
  acts_in: ClassVar[str] = EMBEDDING

  def __init__(self, options=None):
    self.options = self.Options() if options is None else options

  def check(self, head_dim: int) -> None:
    """Raises ValueError when the model's shape cannot take this scheme."""
    del head_dim

  def embedding(self, emb_dim: int, max_len: int, dtype) -> nn.Module | None:
    """A module mapping positions [B, L] to [B, L, emb_dim]; None: none."""
    del emb_dim, max_len, dtype
    return None

  def rotate(self, x_BxLxHxD, positions_BxL):
    """Queries or keys with their positions applied (identity by default)."""
    del positions_BxL
    return x_BxLxHxD

  def score_bias(self, q_positions_BxQ, kv_positions_BxK, num_heads: int,
                 causal: bool):
    """A float32 score bias [B, H, Q, K], or None.

    Called inside the attention frame's scope, so it may create parameters.
    """
    del q_positions_BxQ, kv_positions_BxK, num_heads, causal
    return None


def sinusoidal_embedding(positions_BxL, dim: int):
  """Sine/cosine position encodings for integer positions, [B, L, dim]."""
  half = dim // 2
  inv_freq = np.exp(-np.log(10_000.0) * np.arange(half) / half)
  angles_BxLxH = positions_BxL[..., None].astype(jnp.float32) * inv_freq[
      None, None]
  enc = jnp.concatenate([jnp.sin(angles_BxLxH), jnp.cos(angles_BxLxH)], -1)
  return jnp.pad(enc, [(0, 0), (0, 0), (0, dim - 2 * half)])


class SinusoidalEmbedding(nn.Module):
  """Fixed sine/cosine encodings (no parameters), float32."""

  dim: int

  def __call__(self, positions_BxL):
    return sinusoidal_embedding(positions_BxL, self.dim)


@SCHEMES.register('sinusoidal')
class Sinusoidal(PositionScheme):
  """Vaswani et al. (2017): fixed encodings added to the embeddings."""

  def embedding(self, emb_dim, max_len, dtype):
    del max_len, dtype
    return SinusoidalEmbedding(emb_dim)


@SCHEMES.register('learned')
class Learned(PositionScheme):
  """One learned embedding per position up to the model's max_len."""

  def embedding(self, emb_dim, max_len, dtype):
    return nn.Embed(
        max_len,
        emb_dim,
        dtype=dtype,
        embedding_init=part.init(
            nn.initializers.normal(stddev=0.02), part.TABLE, part.EMBED
        ),
    )


@dataclasses.dataclass(frozen=True)
class RopeOptions:
  # Wavelength scale of the rotation frequencies (Su et al. use 10,000).
  base: float = 10_000.0

  def __post_init__(self):
    if self.base <= 1:
      raise ValueError(f'base={self.base} must be greater than 1.')


@SCHEMES.register('rope')
class Rope(PositionScheme):
  """Rotary embeddings: a query-key dot product sees only their offset."""

  Options = RopeOptions
  acts_in = ROTATION

  def check(self, head_dim):
    if head_dim % 2:
      raise ValueError(
          "position_scheme='rope' rotates channel pairs, but the head "
          f'dimension qkv_dim/num_heads={head_dim} is odd; choose qkv_dim and '
          'num_heads giving an even head dimension.'
      )

  def rotate(self, x_BxLxHxD, positions_BxL):
    return rotate(x_BxLxHxD, positions_BxL, self.options.base)


@SCHEMES.register('alibi')
class Alibi(PositionScheme):
  """A per-head linear penalty on the query-key distance."""

  acts_in = SCORE_BIAS

  def score_bias(self, q_positions_BxQ, kv_positions_BxK, num_heads, causal):
    del causal
    return alibi_bias(q_positions_BxQ, kv_positions_BxK, num_heads)


@dataclasses.dataclass(frozen=True)
class RelativeBiasOptions:
  # T5-style buckets of query-key offsets: half exact, half logarithmic.
  num_buckets: int = 32
  # Offsets at or beyond this share the farthest bucket.
  max_distance: int = 128

  def __post_init__(self):
    if self.num_buckets < 2:
      raise ValueError(f'num_buckets={self.num_buckets} must be at least 2.')
    if self.max_distance <= self.num_buckets // 2:
      raise ValueError(
          f'max_distance={self.max_distance} must exceed half of '
          f'num_buckets={self.num_buckets}, or the logarithmic buckets are '
          'empty.'
      )


@SCHEMES.register('relative_bias')
class RelativeBias(PositionScheme):
  """A learned per-head bias for bucketed offsets, per self-attention layer."""

  Options = RelativeBiasOptions
  acts_in = SCORE_BIAS

  def score_bias(self, q_positions_BxQ, kv_positions_BxK, num_heads, causal):
    return RelativePositionBias(
        num_heads=num_heads,
        num_buckets=self.options.num_buckets,
        max_distance=self.options.max_distance,
        bidirectional=not causal,
        name='relative_bias',
    )(q_positions_BxQ, kv_positions_BxK)


def rotate(x_BxLxHxD, positions_BxL, base: float = 10_000.0):
  """Rotary position embedding of queries or keys.

  Channel i of the first half and channel i of the second half form a pair
  that is rotated by angle `position * base**(-2i/D)`. Rotating queries and
  keys alike makes their dot product a function of the position offset.

  Args:
    x_BxLxHxD: queries or keys; D must be even.
    positions_BxL: integer position of each token.
    base: wavelength scale of the rotation frequencies.

  Returns:
    The rotated tensor, same shape and dtype as `x_BxLxHxD`.
  """
  depth = x_BxLxHxD.shape[-1]
  if depth % 2:
    raise ValueError(f'Rotary embeddings need an even head_dim, got {depth}.')
  half = depth // 2
  inv_freq = base ** (-np.arange(half) / half)
  angles_BxLx1xF = (
      positions_BxL[:, :, None, None].astype(jnp.float32)
      * inv_freq[None, None, None]
  )
  sin, cos = jnp.sin(angles_BxLx1xF), jnp.cos(angles_BxLx1xF)
  x = x_BxLxHxD.astype(jnp.float32)
  first, second = x[..., :half], x[..., half:]
  rotated = jnp.concatenate(
      [first * cos - second * sin, second * cos + first * sin], axis=-1
  )
  return rotated.astype(x_BxLxHxD.dtype)


def alibi_slopes(num_heads: int) -> np.ndarray:
  """Per-head ALiBi slopes, largest first.

  For n heads, n a power of two, the slopes are the geometric sequence
  2^(-8/n), 2^(-16/n), ..., 2^(-8). Other head counts take all slopes of the
  next lower power of two and every other slope of the next higher one, as
  the paper prescribes.
  """

  def geometric(n):
    return 2.0 ** (-8.0 * np.arange(1, n + 1) / n)

  lower = 2 ** int(np.floor(np.log2(num_heads)))
  if lower == num_heads:
    return geometric(num_heads)
  extra = geometric(2 * lower)[0::2][: num_heads - lower]
  return np.concatenate([geometric(lower), extra])


def alibi_bias(q_positions_BxQ, kv_positions_BxK, num_heads: int):
  """ALiBi score bias -slope_h * |query position - key position|.

  The paper defines the causal case, where keys never follow the query and
  the distance is query minus key. For bidirectional (encoder) attention we
  use the symmetric distance, so keys on either side are penalised alike.

  Returns:
    float32 bias of shape [B, H, Q, K].
  """
  distance_BxQxK = jnp.abs(
      q_positions_BxQ[:, :, None] - kv_positions_BxK[:, None, :]
  ).astype(jnp.float32)
  slopes_H = jnp.asarray(alibi_slopes(num_heads), jnp.float32)
  return -slopes_H[None, :, None, None] * distance_BxQxK[:, None]


def relative_position_bucket(relative_position, bidirectional: bool,
                             num_buckets: int, max_distance: int):
  """T5 bucket of each relative position (key position minus query position).

  Half of a direction's buckets hold exact small offsets; the other half
  cover offsets up to `max_distance` on a logarithmic scale, and anything
  further shares the last bucket. Bidirectional attention splits the
  buckets between keys before and after the query; causal attention gives
  all of them to keys at or before the query (later keys share bucket 0 and
  are masked anyway).

  Args:
    relative_position: integer array of key minus query positions.
    bidirectional: whether keys after the query get their own buckets.
    num_buckets: total number of buckets.
    max_distance: offsets at or beyond this share the farthest bucket.

  Returns:
    int32 bucket ids in [0, num_buckets), same shape as `relative_position`.
  """
  distance = -relative_position  # Positive for keys before the query.
  offset = 0
  if bidirectional:
    num_buckets //= 2
    offset = jnp.where(distance < 0, num_buckets, 0)
    distance = jnp.abs(distance)
  else:
    distance = jnp.maximum(distance, 0)
  num_exact = num_buckets // 2
  # The logarithm only matters where distance >= num_exact; clamping keeps
  # it finite elsewhere.
  log_ratio = jnp.log(
      jnp.maximum(distance, num_exact).astype(jnp.float32) / num_exact
  ) / np.log(max_distance / num_exact)
  log_bucket = num_exact + (log_ratio * (num_buckets - num_exact)).astype(
      jnp.int32
  )
  log_bucket = jnp.minimum(log_bucket, num_buckets - 1)
  return offset + jnp.where(distance < num_exact, distance, log_bucket)


class RelativePositionBias(nn.Module):
  """Learned per-head score bias for bucketed relative positions.

  Each self-attention layer learns its own table (T5 shares one per stack);
  the parameters are few, and layers may want different ranges.
  """

  num_heads: int
  num_buckets: int
  max_distance: int
  bidirectional: bool

  @nn.compact
  def __call__(self, q_positions_BxQ, kv_positions_BxK):
    """Returns the float32 bias of shape [B, H, Q, K]."""
    buckets_BxQxK = relative_position_bucket(
        kv_positions_BxK[:, None, :] - q_positions_BxQ[:, :, None],
        self.bidirectional,
        self.num_buckets,
        self.max_distance,
    )
    table_NxH = self.param(
        'embedding',
        part.init(
            nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform'),
            part.TABLE, part.HEADS,
        ),
        (self.num_buckets, self.num_heads),
        jnp.float32,
    )
    return jnp.moveaxis(table_NxH[buckets_BxQxK], -1, 1)
