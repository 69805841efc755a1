"""Position schemes, and those that act inside self-attention.

`cfg.position_scheme` picks one scheme for the whole model:
  'sinusoidal', 'learned': absolute encodings added to the token embeddings
    by the Transformer; attention never sees them directly.
  'rope': rotary embeddings (Su et al., 2021) rotate queries and keys by
    their positions, so a query-key dot product depends on the offset only.
  'alibi': a per-head linear penalty on the query-key distance (Press et al.,
    2022).
  'relative_bias': a learned per-head bias for bucketed query-key offsets
    (Raffel et al., 2020, T5).
The last three act inside self-attention only; cross-attention compares two
different sequences whose positions are not comparable.
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from attention_jax.model import partitioning as part

EMBEDDING_SCHEMES = ('sinusoidal', 'learned')
ATTENTION_SCHEMES = ('rope', 'alibi', 'relative_bias')
# Schemes that add a bias to the query-key scores; only mechanisms that
# form scores can honour them.
SCORE_BIAS_SCHEMES = ('alibi', 'relative_bias')


def check_scheme(scheme: str) -> None:
  """Raises ValueError naming the valid choices for an unknown scheme."""
  valid = EMBEDDING_SCHEMES + ATTENTION_SCHEMES
  if scheme not in valid:
    raise ValueError(
        f'Unknown position_scheme {scheme!r}; valid choices are: '
        f'{", ".join(valid)}.'
    )


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
      positions_BxL[:, :, None, None].astype(jnp.float32) * inv_freq
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
