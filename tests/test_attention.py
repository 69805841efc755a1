"""Multi-head dot-product attention against references nobody here wrote."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import attention
from attention_jax.attention import kernels
from attention_jax.attention import masks
from attention_jax.attention.dot_product import scaled_dot_product
from attention_jax.model.config import TransformerConfig

B, Q, K, H, D = 2, 5, 7, 4, 8


def _segments():
  # Row 0: two packed segments and padding; row 1: one segment, padded.
  q_seg = jnp.array([[1, 1, 2, 2, 0], [1, 1, 1, 1, 0]])
  kv_seg = jnp.array([[1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 0, 0]])
  return q_seg, kv_seg


def _real_query_rows(q_seg):
  return np.asarray(q_seg != 0)


@pytest.mark.parametrize('causal', [False, True])
def test_scaled_dot_product_matches_jax_nn(causal):
  keys = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(keys[0], (B, Q, H, D))
  k = jax.random.normal(keys[1], (B, K, H, D))
  v = jax.random.normal(keys[2], (B, K, H, D))
  q_seg, kv_seg = _segments()
  mask = masks.segment_mask(q_seg, kv_seg)
  if causal:
    mask &= masks.causal_mask(Q, K)
  ours = scaled_dot_product(q, k, v, mask)
  reference = jax.nn.dot_product_attention(q, k, v, mask=mask)
  real = _real_query_rows(q_seg)
  if causal:
    # Query 0 of row 0 sees no key of its segment (keys are offset by K - Q).
    real = real & np.asarray(mask.any(-1)[:, 0])
  np.testing.assert_allclose(ours[real], reference[real], atol=1e-5)


def test_module_matches_flax_multi_head_attention():
  cfg = TransformerConfig(
      vocab_size=10, emb_dim=32, num_heads=H, qkv_dim=H * D, deterministic=True
  )
  keys = jax.random.split(jax.random.key(1), 3)
  x_q = jax.random.normal(keys[0], (B, Q, 32))
  x_kv = jax.random.normal(keys[1], (B, K, 32))
  q_seg, kv_seg = _segments()
  ours = attention.get('dot_product')(cfg=cfg)
  params = ours.init(keys[2], x_q, x_kv, q_seg, kv_seg)
  reference = nn.MultiHeadDotProductAttention(
      num_heads=H, qkv_features=H * D, deterministic=True
  )
  out = ours.apply(params, x_q, x_kv, q_seg, kv_seg)
  expected = reference.apply(
      params, x_q, x_kv, mask=masks.segment_mask(q_seg, kv_seg)
  )
  real = _real_query_rows(q_seg)
  np.testing.assert_allclose(out[real], expected[real], atol=1e-5)


def test_other_segments_and_padding_do_not_leak():
  cfg = TransformerConfig(
      vocab_size=10, emb_dim=16, num_heads=2, qkv_dim=16, deterministic=True
  )
  module = attention.get('dot_product')(cfg=cfg, causal=True)
  x = jax.random.normal(jax.random.key(2), (1, 6, 16))
  seg = jnp.array([[1, 1, 1, 2, 2, 0]])
  params = module.init(jax.random.key(3), x, x, seg, seg)
  out = module.apply(params, x, x, seg, seg)
  changed = x.at[0, 3:].set(jax.random.normal(jax.random.key(4), (3, 16)))
  out_changed = module.apply(params, changed, changed, seg, seg)
  np.testing.assert_allclose(out[0, :3], out_changed[0, :3], atol=1e-6)
  assert not np.allclose(out[0, 3:5], out_changed[0, 3:5])


def test_registry_names_valid_choices_on_unknown_name():
  with pytest.raises(ValueError, match='valid choices are: .*dot_product'):
    attention.get('dot_prodcut')


def test_unavailable_kernel_falls_back_to_xla_with_one_log_line(
    caplog, monkeypatch
):
  # Reasons are logged once per process; start from none logged yet.
  monkeypatch.setattr(kernels, '_logged_reasons', set())
  cfg = TransformerConfig(
      vocab_size=10, emb_dim=32, num_heads=H, qkv_dim=H * D,
      deterministic=True, implementation='cudnn',
  )
  x = jax.random.normal(jax.random.key(5), (B, Q, 32))
  q_seg, _ = _segments()
  xla = attention.get('dot_product')(cfg=cfg.replace(implementation='xla'))
  params = xla.init(jax.random.key(6), x, x, q_seg, q_seg)
  fused = attention.get('dot_product')(cfg=cfg)
  with caplog.at_level('INFO'):
    outs = [fused.apply(params, x, x, q_seg, q_seg) for _ in range(3)]
  fallbacks = [r for r in caplog.records if 'runs as' in r.getMessage()]
  assert len(fallbacks) == 1 and 'cudnn' in fallbacks[0].getMessage()
  np.testing.assert_allclose(
      outs[0], xla.apply(params, x, x, q_seg, q_seg), atol=1e-6
  )
