"""Options of the frame that apply to many mechanisms: QK-norm, attention
sinks and hybrid (per-layer) stacks, checked against formulas written out
here and against `jax.nn.dot_product_attention`."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import attention
from attention_jax.attention import frame
from attention_jax.model import from_config
from attention_jax.model.config import TransformerConfig
from attention_jax.model.transformer import Transformer
from attention_jax.train import config_check
from experiments.configs import smoke
import decoding_checks

HEADS, DEPTH, WIDTH = 2, 4, 8


def _normal(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape)


def _layer(**config):
  return frame.MultiHeadAttention(
      frame.AttentionConfig(num_heads=HEADS, head_dim=DEPTH,
                            deterministic=True, **config),
      causal=False, self_attention=True)


def _projected(params, name, x):
  return jnp.einsum('ble,ehd->blhd', x, params[name]['kernel']) + params[
      name]['bias'][None, None]


def _out(params, heads_BxLxHxD):
  return jnp.einsum('blhd,hde->ble', heads_BxLxHxD,
                    params['out']['kernel']) + params['out']['bias'][None, None]


def _run(layer, x, seed=1):
  seg = jnp.ones(x.shape[:2], jnp.int32)
  params = nn.unbox(layer.init(jax.random.key(seed), x, x, seg, seg)[
      'params'])
  params = jax.tree.map(lambda p: p + 0.3 * _normal(7, p.shape), params)
  return params, layer.apply({'params': params}, x, x, seg, seg)


def test_rms_qk_norm_is_rmsnorm_of_each_head_with_a_learned_scale():
  x = 3.0 * _normal(0, (2, 5, WIDTH))
  params, out = _run(_layer(qk_norm='rms'), x)

  def rms_norm(y, scale):
    return y / jnp.sqrt(jnp.mean(y**2, -1, keepdims=True) + 1e-6) * scale[
        None, None, None]

  query = rms_norm(_projected(params, 'query', x), params['query_norm'])
  key = rms_norm(_projected(params, 'key', x), params['key_norm'])
  expected = jax.nn.dot_product_attention(query, key,
                                          _projected(params, 'value', x))
  np.testing.assert_allclose(out, _out(params, expected), atol=1e-5)


def test_l2_qk_norm_makes_logits_a_learned_gain_times_the_cosine():
  x = 3.0 * _normal(0, (2, 5, WIDTH))
  params, out = _run(_layer(qk_norm='l2', qk_norm_gain=5.0), x)
  query, key = _projected(params, 'query', x), _projected(params, 'key', x)
  cosine = jnp.einsum('bqhd,bkhd->bhqk', query, key) / (
      jnp.linalg.norm(query, axis=-1).transpose(0, 2, 1)[..., None]
      * jnp.linalg.norm(key, axis=-1).transpose(0, 2, 1)[:, :, None, :])
  weights = jax.nn.softmax(params['qk_norm_gain'][None, :, None, None] *
                           cosine)
  expected = jnp.einsum('bhqk,bkhd->bqhd', weights,
                        _projected(params, 'value', x))
  np.testing.assert_allclose(out, _out(params, expected), atol=1e-5)
  # The gain starts where the option says (before the test's perturbation).
  seg = jnp.ones((2, 5), jnp.int32)
  initial = nn.unbox(_layer(qk_norm='l2', qk_norm_gain=5.0).init(
      jax.random.key(1), x, x, seg, seg)['params'])
  np.testing.assert_array_equal(initial['qk_norm_gain'], [5.0] * HEADS)


def test_zero_sink_is_softmax_off_by_one():
  x = _normal(0, (2, 5, WIDTH))
  params, out = _run(_layer(attention_sink='zero'), x)
  assert 'sink' not in params
  query, key = _projected(params, 'query', x), _projected(params, 'key', x)
  logits = jnp.einsum('bqhd,bkhd->bhqk', query, key) / np.sqrt(DEPTH)
  weights = jnp.exp(logits) / (1.0 + jnp.exp(logits).sum(-1, keepdims=True))
  expected = jnp.einsum('bhqk,bkhd->bqhd', weights,
                        _projected(params, 'value', x))
  np.testing.assert_allclose(out, _out(params, expected), atol=1e-5)


def test_a_large_learned_sink_takes_all_weight_from_the_keys():
  x = _normal(0, (2, 5, WIDTH))
  layer = _layer(attention_sink='learned')
  seg = jnp.ones((2, 5), jnp.int32)
  params = nn.unbox(layer.init(jax.random.key(1), x, x, seg, seg)['params'])
  np.testing.assert_array_equal(params['sink'], jnp.zeros(HEADS))
  params['sink'] = jnp.full((HEADS,), 60.0)
  out = layer.apply({'params': params}, x, x, seg, seg)
  np.testing.assert_allclose(
      out, jnp.broadcast_to(params['out']['bias'], out.shape), atol=1e-6)


@pytest.mark.parametrize('option, value, refused', [
    ('attention_sink', 'learned', 'linear'),
    ('attention_sink', 'zero', 'chunked'),
    ('qk_norm', 'rms', 'mean_pooling'),
    ('qk_norm', 'l2', 'cosine'),
    ('qk_norm', 'rms', 'deltanet'),
])
def test_options_a_mechanism_cannot_take_are_refused(option, value, refused):
  config = smoke.get_config()
  config.model[option] = value
  config.model.cross_attention = refused
  with pytest.raises(ValueError) as error:
    config_check.check_config(config)
  message = str(error.value)
  assert f'config.model.{option}={value!r}' in message
  assert f'config.model.cross_attention={refused!r}' in message
  assert "'softmax'" not in message.split('use it with one of:')[0]
  assert 'softmax' in message.split('use it with one of:')[1]


def test_misspelt_option_values_are_refused_with_the_choices():
  config = smoke.get_config()
  config.model.qk_norm = 'layer'
  with pytest.raises(ValueError, match="qk_norm='layer'.*none, rms, l2"):
    config_check.check_config(config)


def test_hybrid_stack_names_one_mechanism_per_layer():
  config = smoke.get_config()
  config.model.num_decoder_layers = 3
  config.model.decoder_self_attention = 'linear, linear,softmax'
  config_check.check_config(config)
  cfg = from_config.transformer_config(config, vocab_size=50)
  assert cfg.decoder_self_attention == ('linear', 'linear', 'softmax')
  assert [cfg.attention_config('decoder_self_attention', i).mechanism
          for i in range(3)] == ['linear', 'linear', 'softmax']
  assert cfg.attention_config('cross_attention', 2).mechanism == 'softmax'
  assert cfg.attention_config('decoder_self_attention', 2).layer_index == 2
  assert dict(cfg.attention_options).keys() == {'softmax', 'linear'}


def test_hybrid_stack_of_the_wrong_length_is_refused():
  config = smoke.get_config()
  config.model.num_encoder_layers = 2
  config.model.encoder_self_attention = 'linear,linear,softmax'
  with pytest.raises(ValueError, match=(
      r"encoder_self_attention='linear,linear,softmax' names 3 mechanisms.*"
      r'encoder has 2 layers')):
    config_check.check_config(config)


def test_hybrid_stack_with_a_misspelt_name_is_refused():
  config = smoke.get_config()
  config.model.num_decoder_layers = 2
  config.model.decoder_self_attention = 'linear,softmx'
  with pytest.raises(ValueError, match="softmx.*valid choices"):
    config_check.check_config(config)


def test_hybrid_stack_parameters_follow_each_layer_and_decode_exactly():
  cfg = TransformerConfig(
      vocab_size=50, emb_dim=WIDTH, num_heads=HEADS, qkv_dim=HEADS * DEPTH,
      mlp_dim=16, num_encoder_layers=2, num_decoder_layers=2, max_len=8,
      deterministic=True,
      attention_options=tuple(
          (n, attention.MECHANISMS.options(n, None))
          for n in ('linear', 'softmax', 'gated')),
      encoder_self_attention=('linear', 'softmax'),
      decoder_self_attention=('linear', 'gated'))
  decoding_checks.assert_cached_decoding_equals_full_forward(cfg)
  params = Transformer(cfg).init(
      jax.random.key(0), jnp.ones((1, 4), jnp.int32),
      jnp.ones((1, 3), jnp.int32))['params']
  assert 'gate' not in params['decoder_0']['self_attention']
  assert 'gate' in params['decoder_1']['self_attention']
