"""Fused-kernel dispatch for softmax attention, and when each kernel applies.

A mechanism lists the fused kernels that compute exactly it in
`Capabilities.fused_kernels` (only plain softmax attention today), and
`config.model.implementation` asks for one:
  'xla': the mechanism's own jnp code; runs everywhere, with any mask,
    bias and attention dropout.
  'cudnn': cuDNN flash attention via `jax.nn.dot_product_attention` (GPU).
  'pallas': the Pallas TPU flash-attention kernel (TPU).
  'auto': 'cudnn' on GPU and 'pallas' on TPU where they apply, else 'xla'.
A kernel that cannot run a particular call (backend, dtype, head size,
length, dropout, mask) falls back to 'xla', and the reason is logged once per
distinct reason rather than once per call: a warning when the kernel was
asked for by name, an info line under 'auto'.

`select_implementation` is the whole decision, as a pure function of static
facts, so it can be tested on any machine; `resolve` feeds it the facts of a
call and logs; `attend_with` runs the chosen fused kernel.
"""

from absl import logging
import jax
from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ('auto', 'xla', 'cudnn', 'pallas')

# The TPU kernel tiles queries and keys in blocks of this many tokens, and
# head sizes above it must be multiples of it.
_PALLAS_BLOCK = tpu_flash.MIN_BLOCK_SIZE
# cuDNN flash attention: head sizes up to this (256 on Hopper and later;
# the smaller limit holds on every GPU) and multiples of 8.
_CUDNN_MAX_HEAD_DIM = 128

_logged_reasons: set[str] = set()


def select_implementation(requested: str, platform: str, dtype,
                          head_dim: int, q_len: int, kv_len: int,
                          has_dropout: bool, has_bias: bool, *,
                          has_segment_ids: bool = True
                          ) -> tuple[str, str | None]:
  """Chooses the kernel for one attention call.

  Args:
    requested: one of IMPLEMENTATIONS.
    platform: 'cpu', 'gpu' (CUDA), 'rocm' or 'tpu'.
    dtype: dtype of queries, keys and values.
    head_dim: size of each head.
    q_len: number of queries.
    kv_len: number of keys.
    has_dropout: whether attention dropout applies to this call.
    has_bias: whether a score bias is added (ALiBi, relative positions).
    has_segment_ids: whether the mask is exactly "same non-padding segment"
      (and causal with queries aligned to keys) and its segment ids are
      given; the TPU kernel can express no other mask.

  Returns:
    (implementation, reason): the kernel to run ('xla', 'cudnn' or
    'pallas') and, when that is not the requested one, why (None when the
    request is honoured as asked).

  Raises:
    ValueError: for an unknown `requested`, naming the valid choices.
  """
  if requested not in IMPLEMENTATIONS:
    raise ValueError(
        f'Unknown attention implementation {requested!r}; valid choices '
        f'are: {", ".join(IMPLEMENTATIONS)}.'
    )
  if requested == 'xla':
    return 'xla', None
  candidate = requested
  if requested == 'auto':
    candidate = {'gpu': 'cudnn', 'tpu': 'pallas'}.get(platform)
    if candidate is None:
      return 'xla', f'no fused attention kernel on {platform}'
  check = _cudnn_unsupported if candidate == 'cudnn' else _pallas_unsupported
  reason = check(platform, np.dtype(dtype), head_dim, q_len, kv_len,
                 has_dropout, has_bias, has_segment_ids)
  if reason is not None:
    return 'xla', f'{candidate}: {reason}'
  return candidate, None


def _cudnn_unsupported(platform, dtype, head_dim, q_len, kv_len,
                       has_dropout, has_bias, has_segment_ids):
  del has_bias, has_segment_ids  # cuDNN takes any mask and bias.
  if platform != 'gpu':
    return f'needs a CUDA GPU, running on {platform}'
  if dtype not in (np.dtype(jnp.float16), np.dtype(jnp.bfloat16)):
    return f'needs float16 or bfloat16, got {dtype}'
  if head_dim % 8 or head_dim > _CUDNN_MAX_HEAD_DIM:
    return (f'needs a head size that is a multiple of 8 and at most '
            f'{_CUDNN_MAX_HEAD_DIM}, got {head_dim}')
  if has_dropout:
    return 'attention dropout is not exposed by jax.nn.dot_product_attention'
  # The mask reaches cuDNN as a bias, whose gradient needs even lengths.
  if q_len % 2 or kv_len % 2:
    return f'needs even lengths with a mask, got {q_len} x {kv_len}'
  return None


def _pallas_unsupported(platform, dtype, head_dim, q_len, kv_len,
                        has_dropout, has_bias, has_segment_ids):
  del dtype, has_bias  # float32 and bfloat16 both run; biases are taken.
  if platform != 'tpu':
    return f'needs a TPU, running on {platform}'
  if has_dropout:
    return 'the kernel has no attention dropout'
  if not has_segment_ids:
    return 'the kernel takes only segment-id and causal masks'
  if q_len % _PALLAS_BLOCK or kv_len % _PALLAS_BLOCK:
    return (f'needs lengths that are multiples of {_PALLAS_BLOCK}, got '
            f'{q_len} x {kv_len}')
  if head_dim > _PALLAS_BLOCK and head_dim % _PALLAS_BLOCK:
    return (f'needs a head size of at most {_PALLAS_BLOCK} or a multiple of '
            f'it, got {head_dim}')
  return None


def current_platform() -> str:
  """The default backend's platform, telling CUDA and ROCm GPUs apart."""
  platform = jax.default_backend()
  if platform == 'gpu' and 'rocm' in jax.devices()[0].client.platform_version:
    return 'rocm'
  return platform


def resolve(requested: str, query_BxQxHxD, key_BxKxGxD, *, has_dropout: bool,
            has_bias: bool, has_segment_ids: bool) -> str:
  """`select_implementation` for this call on this backend; logs a fallback.

  Runs while tracing, so the log line appears once per distinct reason and
  never inside compiled steps.
  """
  implementation, reason = select_implementation(
      requested, current_platform(), query_BxQxHxD.dtype,
      query_BxQxHxD.shape[-1], query_BxQxHxD.shape[1], key_BxKxGxD.shape[1],
      has_dropout, has_bias, has_segment_ids=has_segment_ids,
  )
  if reason is not None and reason not in _logged_reasons:
    _logged_reasons.add(reason)
    log = logging.info if requested == 'auto' else logging.warning
    log('Attention implementation %r runs as %r: %s.', requested,
        implementation, reason)
  return implementation


def attend_with(implementation: str, query_BxQxHxD, key_BxKxGxD,
                value_BxKxGxD, *, mask, bias=None, segment_ids=None,
                causal: bool = False):
  """Softmax attention with a fused kernel chosen by `resolve`.

  Args:
    implementation: 'cudnn' or 'pallas'.
    query_BxQxHxD: queries.
    key_BxKxGxD: keys with G key/value heads; G divides H.
    value_BxKxGxD: values with G heads.
    mask: boolean mask broadcastable to [B, H, Q, K] (used by cuDNN).
    bias: None, or a score bias broadcastable to [B, H, Q, K].
    segment_ids: (q_segment_ids_BxQ, kv_segment_ids_BxK), the same mask as
      segment ids (used by the TPU kernel).
    causal: whether `mask` includes the causal mask (used by the TPU kernel).

  Returns:
    The attended values, [B, Q, H, D]. Queries that may see no key at all
    (padding) get kernel-specific values, as nothing reads them.
  """
  if implementation == 'cudnn':
    return jax.nn.dot_product_attention(
        query_BxQxHxD, key_BxKxGxD, value_BxKxGxD,
        bias=None if bias is None else bias.astype(query_BxQxHxD.dtype),
        mask=mask, implementation='cudnn',
    )
  if implementation == 'pallas':
    batch, q_len, num_heads, depth = query_BxQxHxD.shape
    # The kernel wants one key/value head per query head, heads before length.
    to_bhld = lambda x: jnp.swapaxes(  # noqa: E731
        jnp.repeat(x, num_heads // x.shape[2], axis=2), 1, 2
    )
    if bias is not None:
      bias = jnp.broadcast_to(
          bias, (batch, num_heads, q_len, key_BxKxGxD.shape[1])
      ).astype(jnp.float32)
    out_BxHxQxD = tpu_flash.flash_attention(
        to_bhld(query_BxQxHxD), to_bhld(key_BxKxGxD), to_bhld(value_BxKxGxD),
        ab=bias, segment_ids=tpu_flash.SegmentIds(*segment_ids),
        causal=causal, sm_scale=1.0 / np.sqrt(depth),
    )
    return jnp.swapaxes(out_BxHxQxD, 1, 2)
  raise ValueError(
      f'attend_with runs the fused kernels cudnn and pallas, not '
      f'{implementation!r}; the mechanism computes xla itself.'
  )
