"""Which fused attention kernel runs, and the fallback to the mechanism's own
code logged once per reason."""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import attention
from attention_jax.attention import frame
from attention_jax.attention import fused

E, H, D = 32, 4, 8
FUSED = [name for name in attention.names()
         if attention.get(name).capabilities.fused_kernels]

SIMULATED = [
    # requested, platform, dtype, head_dim, q_len, kv_len, dropout, bias,
    # segment ids -> implementation
    ('auto', 'cpu', 'float32', 64, 128, 128, False, False, True, 'xla'),
    ('auto', 'gpu', 'bfloat16', 64, 128, 128, False, True, False, 'cudnn'),
    ('auto', 'gpu', 'float32', 64, 128, 128, False, False, True, 'xla'),
    ('auto', 'gpu', 'bfloat16', 64, 128, 128, True, False, True, 'xla'),
    ('cudnn', 'gpu', 'float16', 12, 128, 128, False, False, True, 'xla'),
    ('cudnn', 'gpu', 'float16', 256, 128, 128, False, False, True, 'xla'),
    ('cudnn', 'gpu', 'bfloat16', 64, 1, 256, False, False, True, 'xla'),
    ('cudnn', 'rocm', 'bfloat16', 64, 128, 128, False, False, True, 'xla'),
    ('cudnn', 'tpu', 'bfloat16', 64, 128, 128, False, False, True, 'xla'),
    ('auto', 'tpu', 'float32', 64, 256, 512, False, True, True, 'pallas'),
    ('pallas', 'tpu', 'bfloat16', 256, 128, 128, False, False, True, 'pallas'),
    ('pallas', 'tpu', 'bfloat16', 192, 128, 128, False, False, True, 'xla'),
    ('pallas', 'tpu', 'float32', 64, 100, 128, False, False, True, 'xla'),
    ('pallas', 'tpu', 'float32', 64, 128, 128, True, False, True, 'xla'),
    ('pallas', 'tpu', 'float32', 64, 128, 128, False, False, False, 'xla'),
    ('pallas', 'gpu', 'bfloat16', 64, 128, 128, False, False, True, 'xla'),
    ('xla', 'gpu', 'bfloat16', 64, 128, 128, False, False, True, 'xla'),
]


@pytest.mark.parametrize('case', SIMULATED)
def test_kernel_decision_table(case):
  *facts, has_segment_ids, expected = case
  implementation, reason = fused.select_implementation(
      *facts, has_segment_ids=has_segment_ids
  )
  assert implementation == expected
  # A reason is given exactly when the request is not honoured as asked.
  honoured = implementation == facts[0] or (
      facts[0] == 'auto' and implementation != 'xla'
  )
  assert (reason is None) == honoured, reason


def test_unknown_implementation_names_the_choices():
  with pytest.raises(ValueError, match='valid choices are: auto, xla, cudnn'):
    fused.select_implementation('flash', 'gpu', 'bfloat16', 64, 128, 128,
                                False, False)


@pytest.mark.parametrize('requested, level', [('cudnn', logging.WARNING),
                                              ('pallas', logging.WARNING),
                                              ('auto', logging.INFO)])
def test_fallback_on_cpu_logs_once(requested, level, caplog, monkeypatch):
  # Reasons are logged once per process; start from none logged yet.
  monkeypatch.setattr(fused, '_logged_reasons', set())
  q = jnp.zeros((1, 128, H, D))
  with caplog.at_level(logging.INFO, logger='absl'):
    for _ in range(3):
      assert fused.resolve(requested, q, q, has_dropout=False,
                           has_bias=False, has_segment_ids=True) == 'xla'
  lines = [r for r in caplog.records if 'Attention implementation' in r.message]
  assert len(lines) == 1 and lines[0].levelno == level
  assert 'cpu' in lines[0].message


@pytest.mark.parametrize('name', FUSED)
def test_layer_asking_for_an_unavailable_kernel_runs_its_own_code(
    name, caplog, monkeypatch):
  monkeypatch.setattr(fused, '_logged_reasons', set())

  def layer(implementation):
    config = frame.AttentionConfig(mechanism=name, num_heads=H, head_dim=D,
                                   implementation=implementation,
                                   deterministic=True)
    return frame.MultiHeadAttention(config)

  x = jax.random.normal(jax.random.key(5), (2, 5, E))
  seg = jnp.array([[1, 1, 2, 2, 0], [1, 1, 1, 1, 0]], jnp.int32)
  xla = layer('xla')
  params = nn.unbox(xla.init(jax.random.key(6), x, x, seg, seg))
  with caplog.at_level(logging.INFO, logger='absl'):
    outs = [layer('cudnn').apply(params, x, x, seg, seg) for _ in range(3)]
  fallbacks = [r for r in caplog.records if 'runs as' in r.getMessage()]
  assert len(fallbacks) == 1 and 'cudnn' in fallbacks[0].getMessage()
  np.testing.assert_array_equal(outs[0], xla.apply(params, x, x, seg, seg))
