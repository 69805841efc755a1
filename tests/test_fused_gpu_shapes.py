"""Every attention call that the dispatch sends to cuDNN passes JAX's own cuDNN
checks, on a CPU with the platform patched to GPU.

The real `jax.nn.dot_product_attention(implementation='cudnn')` runs: its
shape checks, its mask-to-bias conversion and cuDNN's `check_layout`. Only
what needs a GPU is patched: the cuDNN version, the compute capability (taken
as pre-Hopper, the stricter limits) and the kernel itself, which runs JAX's
`check_is_flash_attention` for inference and for training and then computes
with the XLA implementation.
"""

import jax
from jax._src.cudnn import fused_attention_stablehlo as cudnn
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.attention import frame
from attention_jax.attention import fused
from attention_jax.decode import translator
from attention_jax.model.config import TransformerConfig
from attention_jax.model.transformer import Transformer

VOCAB = 40


@pytest.fixture
def cudnn_calls(monkeypatch):
  """Patches the platform to GPU; returns the shapes each cuDNN call got."""
  calls = []

  def kernel(query, key, value, bias, q_seqlen, kv_seqlen, q_offsets,
             kv_offsets, page_table_k, page_table_v, scale, seed,
             dropout_rate, variadic_args, mask_type, layout,
             sliding_window_length, cudnn_version, return_residual):
    del q_seqlen, kv_seqlen, q_offsets, kv_offsets, page_table_k
    del page_table_v, seed, mask_type, sliding_window_length, return_residual
    assert dropout_rate == 0
    has_bias = variadic_args[0]
    for is_training in (False, True):
      cudnn.check_is_flash_attention(query, key, value, layout, cudnn_version,
                                     has_bias, is_training)
    calls.append((query.shape, key.shape, bias.shape if has_bias else None))
    return jax.nn.dot_product_attention(
        query, key, value, bias=bias if has_bias else None, scale=scale,
        implementation='xla')

  monkeypatch.setattr(fused, 'current_platform', lambda: 'gpu')
  monkeypatch.setattr(cudnn, 'check_cudnn_version', lambda: 90800)
  monkeypatch.setattr(cudnn, 'check_compute_capability', lambda c: False)
  monkeypatch.setattr(cudnn, 'is_cuda_compute_capability_equal',
                      lambda c: False)
  monkeypatch.setattr(cudnn, '_dot_product_attention', kernel)
  return calls


def test_the_harness_refuses_the_old_cache_creation_mask(cudnn_calls):
  """The call of issue 15: a [B, 1, 1, K] mask with 8 queries."""
  q = jnp.zeros((2, 8, 4, 16), jnp.bfloat16)
  kv = jnp.zeros((2, 6, 4, 16), jnp.bfloat16)
  with pytest.raises(ValueError, match='Bias must have same seq length as '
                     'QKV'):
    fused.attend_with('cudnn', q, kv, kv, mask=jnp.ones((2, 1, 1, 6), bool))
  assert not cudnn_calls


def _model_config(**changes) -> TransformerConfig:
  return TransformerConfig(
      vocab_size=VOCAB, emb_dim=64, num_heads=4, qkv_dim=64, mlp_dim=64,
      num_encoder_layers=1, num_decoder_layers=1, max_len=32,
      dropout_rate=0.0, attention_dropout_rate=0.0, dtype=jnp.bfloat16,
      implementation='auto', **changes)


def _tokens(key, shape):
  tokens = jax.random.randint(jax.random.key(key), shape, 1, VOCAB)
  return tokens.at[1, shape[1] // 2:].set(0)  # A padded row.


@pytest.mark.parametrize('changes', [
    {}, {'num_kv_heads': 2}, {'position_scheme': 'relative_bias'},
    {'position_scheme': 'rope'},
])
@pytest.mark.parametrize('source_len, target_len', [(16, 12), (10, 7)])
def test_training_and_eval_passes_reach_cudnn_only_with_accepted_shapes(
    cudnn_calls, changes, source_len, target_len):
  """Encoder self, causal decoder self and padded cross-attention, forward
  and backward; odd lengths fall back instead of reaching the kernel."""
  cfg = _model_config(**changes)
  model = Transformer(cfg.replace(deterministic=True))
  inputs, targets = _tokens(1, (2, source_len)), _tokens(2, (2, target_len))
  params = model.init(jax.random.key(0), inputs, targets)['params']
  cudnn_calls.clear()

  def loss(params):
    logits = model.apply({'params': params}, inputs, targets)
    return jnp.mean(logits.astype(jnp.float32))

  jax.jit(jax.grad(loss))(params)
  query_lengths = sorted({q[1] for q, _, _ in cudnn_calls})
  # Grad traces the forward once: one call per attention layer whose
  # lengths are even.
  expected = [length for length in (target_len, source_len)
              if length % 2 == 0]
  assert query_lengths == sorted(set(expected))
  if source_len % 2 == 0 and target_len % 2 == 0:
    assert len(cudnn_calls) == 3


@pytest.mark.parametrize('changes', [{}, {'num_kv_heads': 1},
                                     {'position_scheme': 'relative_bias'}])
def test_beam_search_translation_passes_the_cudnn_checks(cudnn_calls,
                                                         changes):
  """The whole decoding path: encoder, cache creation and decode steps."""
  cfg = _model_config(**changes)
  inputs = _tokens(3, (2, 16))
  params = Transformer(cfg).init(
      jax.random.key(0), inputs, inputs[:, :8])['params']
  cudnn_calls.clear()
  predict = jax.jit(lambda p, x: translator.predict(
      p, x, cfg=cfg, beam_size=2, alpha=0.6, max_decode_len=8))
  best = predict(params, inputs)
  assert best.shape == (2, 8)
  # The encoder ran on cuDNN; the one-token decode steps fall back.
  assert [q[1] for q, _, _ in cudnn_calls] == [16]


@pytest.mark.parametrize('q_len, kv_len', [(8, 6), (1, 8), (7, 8), (8, 7)])
@pytest.mark.parametrize('causal, self_attention', [
    (False, True), (True, True), (False, False)])
@pytest.mark.parametrize('head_dim', [8, 12, 136])
def test_attention_layer_sends_cudnn_only_what_it_accepts(
    cudnn_calls, q_len, kv_len, causal, self_attention, head_dim):
  if self_attention:
    kv_len = q_len
  config = frame.AttentionConfig(mechanism='softmax', num_heads=2,
                                 head_dim=head_dim, dtype=jnp.bfloat16,
                                 implementation='auto')
  layer = frame.MultiHeadAttention(config, causal=causal,
                                   self_attention=self_attention)
  x_q = jnp.ones((2, q_len, 16), jnp.bfloat16)
  x_kv = jnp.ones((2, kv_len, 16), jnp.bfloat16)
  q_seg = jnp.ones((2, q_len), jnp.int32)
  kv_seg = jnp.ones((2, kv_len), jnp.int32).at[1, kv_len // 2:].set(0)
  params = layer.init(jax.random.key(0), x_q, x_kv, q_seg, kv_seg)
  cudnn_calls.clear()
  out = layer.apply(params, x_q, x_kv, q_seg, kv_seg)
  assert np.all(np.isfinite(np.asarray(out[0], np.float32)))
  reaches = (q_len % 2 == 0 and kv_len % 2 == 0 and head_dim % 8 == 0
             and head_dim <= 128)
  assert bool(cudnn_calls) == reaches
