"""Does the cuDNN attention kernel run here, and does it match the XLA path?

  python -m experiments.check_gpu_kernels

Builds `DotProductAttention` with `implementation='xla'` and `'cudnn'`, gives
both the same parameters and the same packed inputs (several segments per
row, padding at the end), and compares outputs and gradients (w.r.t.
parameters and inputs) for encoder self-attention, causal decoder
self-attention and cross-attention. Padding queries are left out of the
comparison: nothing reads them, and each kernel fills them differently.

Each row prints whether the cuDNN kernel actually ran (the number of cuDNN
fused attention calls in the compiled program of output and gradients), the
difference cudnn vs xla in the same dtype and, for scale, xla in that dtype
vs xla in float32. A difference is the largest |a - b| of an array over the
largest |float32 reference| of that array, maximised over the output or over
the gradient arrays. Off a CUDA GPU 'cudnn' falls back to 'xla' with a logged
warning and every cudnn-vs-xla difference is 0.
"""

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attention_jax.attention import frame

_BATCH = flags.DEFINE_integer('batch', 4, 'Rows.')
_LENGTH = flags.DEFINE_integer('length', 256, 'Query (and self-attention) length.')
_MEMORY_LENGTH = flags.DEFINE_integer(
    'memory_length', 192, 'Key length of cross-attention.'
)
_DTYPES = flags.DEFINE_list('dtypes', ['bfloat16', 'float16'], 'Dtypes.')

_EMB_DIM, _HEADS = 512, 8
_CASES = {
    'encoder_self': dict(causal=False, cross=False),
    'decoder_self': dict(causal=True, cross=False),
    'cross': dict(causal=False, cross=True),
}


def _packed(rng: np.random.Generator, rows: int, length: int,
            segments_per_row: list[int]):
  """Segment ids and per-segment positions; each row ends with padding."""
  segment_ids = np.zeros((rows, length), np.int32)
  positions = np.zeros((rows, length), np.int32)
  for row, count in enumerate(segments_per_row):
    filled = length - int(rng.integers(0, length // 4))
    cuts = np.sort(rng.choice(np.arange(1, filled), count - 1, False))
    bounds = np.concatenate([[0], cuts, [filled]])
    for segment, (start, stop) in enumerate(zip(bounds, bounds[1:]), 1):
      segment_ids[row, start:stop] = segment
      positions[row, start:stop] = np.arange(stop - start)
  return jnp.asarray(segment_ids), jnp.asarray(positions)


def _inputs(case: dict):
  rng = np.random.default_rng(0)
  counts = [int(c) for c in rng.integers(1, 6, _BATCH.value)]
  q_len = _LENGTH.value
  kv_len = _MEMORY_LENGTH.value if case['cross'] else q_len
  q_segments, q_positions = _packed(rng, _BATCH.value, q_len, counts)
  kv_segments, kv_positions = q_segments, q_positions
  if case['cross']:
    kv_segments, kv_positions = _packed(rng, _BATCH.value, kv_len, counts)
  keys = jax.random.split(jax.random.key(1), 3)
  x_q = jax.random.normal(keys[0], (_BATCH.value, q_len, _EMB_DIM))
  x_kv = jax.random.normal(keys[1], (_BATCH.value, kv_len, _EMB_DIM))
  cotangent = jax.random.normal(keys[2], (_BATCH.value, q_len, _EMB_DIM))
  return x_q, x_kv, (q_segments, kv_segments, q_positions, kv_positions), cotangent


def _module(implementation: str, dtype, causal: bool,
            cross: bool) -> frame.MultiHeadAttention:
  config = frame.AttentionConfig(
      mechanism='softmax', num_heads=_HEADS, head_dim=_EMB_DIM // _HEADS,
      deterministic=True, dtype=dtype, implementation=implementation,
  )
  return frame.MultiHeadAttention(config, causal=causal,
                                  self_attention=not cross)


def _run(module, params, case, x_q, x_kv, masks, cotangent):
  """Output and gradients in float32, plus cuDNN calls in the compiled step."""
  valid_BxQx1 = (masks[0] > 0)[..., None]

  def forward(params, x_q, x_kv):
    out = module.apply(params, x_q, x_kv if case['cross'] else x_q, *masks)
    return jnp.where(valid_BxQx1, out.astype(jnp.float32), 0.0)

  def loss(params, x_q, x_kv):
    return jnp.sum(forward(params, x_q, x_kv) * cotangent)

  both = jax.jit(
      lambda p, q, kv: (forward(p, q, kv),
                        jax.grad(loss, argnums=(0, 1, 2))(p, q, kv))
  )
  compiled = both.lower(params, x_q, x_kv).compile()
  out, grads = compiled(params, x_q, x_kv)
  calls = compiled.as_text().count('__cudnn$fmha')
  grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
  return [out], _compared_gradients(grads, case['cross']), calls


def _relative_diff(a, b, reference) -> float:
  """Largest ||a - b|| / ||reference|| over corresponding arrays."""
  return max(
      float(jnp.linalg.norm(x - y) / jnp.linalg.norm(r))
      for x, y, r in zip(a, b, reference)
  )


def _compared_gradients(grads, cross: bool) -> list:
  """Gradients w.r.t. the projection kernels and the attended inputs.

  Biases are left out: the key bias has a gradient of zero up to rounding
  (softmax ignores a constant added to every score), so relative errors of
  it mean nothing. In self-attention the key/value input is the query input,
  so only the latter is compared.
  """
  params, x_q, x_kv = grads
  kernels = [
      leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
      if 'kernel' in jax.tree_util.keystr(path)
  ]
  return kernels + [x_q] + ([x_kv] if cross else [])


def main(argv) -> None:
  del argv
  print(f'devices: {jax.devices()}', flush=True)
  print(f"{'case':>13} {'dtype':>9} {'cudnn ran':>10} {'out cudnn-xla':>13} "
        f"{'out xla-f32':>11} {'grad cudnn-xla':>14} {'grad xla-f32':>12}",
        flush=True)
  for name, case in _CASES.items():
    x_q, x_kv, masks, cotangent = _inputs(case)
    reference = _module('xla', jnp.float32, case['causal'], case['cross'])
    kv = x_kv if case['cross'] else x_q
    params = nn.unbox(
        jax.jit(reference.init)(jax.random.key(2), x_q, kv, *masks)
    )
    # Full float32 matmuls: on GPU the default would be TensorFloat-32.
    with jax.default_matmul_precision('float32'):
      ref_out, ref_grads, _ = _run(reference, params, case, x_q, x_kv, masks,
                                   cotangent)
    for dtype_name in _DTYPES.value:
      dtype = jnp.dtype(dtype_name)
      xla_out, xla_grads, _ = _run(
          _module('xla', dtype, case['causal'], case['cross']), params, case,
          x_q, x_kv, masks, cotangent)
      cudnn_out, cudnn_grads, calls = _run(
          _module('cudnn', dtype, case['causal'], case['cross']), params,
          case, x_q, x_kv, masks, cotangent,
      )
      print(f'{name:>13} {dtype_name:>9} '
            f"{f'yes ({calls})' if calls else 'NO':>10} "
            f'{_relative_diff(cudnn_out, xla_out, ref_out):13.2e} '
            f'{_relative_diff(xla_out, ref_out, ref_out):11.2e} '
            f'{_relative_diff(cudnn_grads, xla_grads, ref_grads):14.2e} '
            f'{_relative_diff(xla_grads, ref_grads, ref_grads):12.2e}',
            flush=True)


if __name__ == '__main__':
  app.run(main)
