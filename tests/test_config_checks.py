"""Undefined combinations are refused before anything is compiled, naming the
field and the valid choices; what is refused follows from the registries."""

import jax
import jax.numpy as jnp
import pytest

from attention_jax import attention
from attention_jax.attention import frame
from attention_jax.attention import positions
from attention_jax.train import config_check
from experiments.configs import smoke

NAMES = attention.names()
CAUSAL = [n for n in NAMES if attention.get(n).capabilities.causal]
NOT_CAUSAL = [n for n in NAMES if n not in CAUSAL]
IN_ATTENTION = [s for s in positions.SCHEMES.names()
                if positions.SCHEMES.get(s).acts_in != positions.EMBEDDING]
FUSED_KERNELS = sorted({k for n in NAMES
                        for k in attention.get(n).capabilities.fused_kernels})


def _config(**model):
  config = smoke.get_config()
  config.model.update(model)
  return config


def _refusal(config) -> str:
  with pytest.raises(ValueError) as error:
    config_check.check_config(config)
  return str(error.value)


def _place(name):
  """Config overrides that put mechanism `name` everywhere it can go."""
  return {'attention' if name in CAUSAL else 'cross_attention': name}


@pytest.mark.parametrize('name, scheme', [
    (n, s) for n in NAMES
    for s in ['sinusoidal', *sorted(attention.get(n).capabilities
                                    .position_schemes)]])
def test_every_mechanism_is_accepted_where_it_can_serve(name, scheme):
  config_check.check_config(_config(position_scheme=scheme, **_place(name)))


@pytest.mark.parametrize('name', NOT_CAUSAL)
def test_non_causal_mechanism_as_decoder_self_attention_is_refused(name):
  message = _refusal(_config(decoder_self_attention=name))
  assert f"config.model.decoder_self_attention={name!r}" in message
  assert 'decoder self-attention' in message
  choices = message.split('choose one of: ')[1]
  assert all(n in choices for n in CAUSAL)
  assert name not in choices


@pytest.mark.parametrize('name', NOT_CAUSAL)
def test_non_causal_mechanism_refuses_a_causal_layer(name):
  config = frame.AttentionConfig(mechanism=name, num_heads=2, head_dim=4)
  layer = frame.MultiHeadAttention(config, causal=True)
  x, seg = jnp.zeros((1, 3, 8)), jnp.ones((1, 3), jnp.int32)
  with pytest.raises(ValueError, match=f'{name!r} cannot be causal'):
    layer.init(jax.random.key(0), x, x, seg, seg)


@pytest.mark.parametrize('name, scheme', [
    (n, s) for n in NAMES for s in IN_ATTENTION
    if s not in attention.get(n).capabilities.position_schemes])
def test_position_scheme_the_mechanism_does_not_honour_is_refused(name,
                                                                  scheme):
  message = _refusal(_config(encoder_self_attention=name,
                             position_scheme=scheme))
  assert f'config.model.position_scheme={scheme!r}' in message
  assert f"config.model.encoder_self_attention={name!r}" in message
  assert 'encoder self attention' in message


@pytest.mark.parametrize('old, new', sorted(
    attention.MECHANISMS.renamed().items()))
def test_renamed_mechanism_is_refused_naming_the_new_name(old, new):
  message = _refusal(_config(attention=old))
  assert f'config.model.attention: The attention mechanism {old!r}' in message
  assert f'now called {new!r}' in message


def test_unknown_mechanism_names_the_valid_choices():
  with pytest.raises(ValueError, match='valid choices are: .*softmax'):
    attention.get('softmx')


def test_config_from_before_mechanism_options_is_refused():
  config = _config()
  config.model.window_size = 32
  message = _refusal(config)
  assert 'config.model.window_size' in message
  assert 'config.model.options.<mechanism>.<field>' in message


def test_misspelt_option_field_is_refused_naming_it():
  config = _config()
  config.model.options.local.windw_size = 3
  message = _refusal(config)
  assert "config.model.options.local has no field 'windw_size'" in message
  assert 'window_size' in message.split('its fields are:')[1]


@pytest.mark.parametrize('group, name, field, value', [
    ('options', 'local', 'window_size', 0),
    ('options', 'performer', 'num_random_features', 0),
    ('position_options', 'relative_bias', 'max_distance', 8),
])
def test_out_of_range_option_is_refused_naming_it(group, name, field, value):
  config = _config()
  config.model[group][name][field] = value
  message = _refusal(config)
  assert message.startswith(f'config.model.{group}.{name}: {field}=')


@pytest.mark.parametrize('kernel', FUSED_KERNELS)
def test_fused_kernel_no_mechanism_in_use_has_is_refused(kernel):
  without = next(n for n in CAUSAL
                 if kernel not in attention.get(n).capabilities.fused_kernels)
  message = _refusal(_config(attention=without, implementation=kernel))
  assert f'config.model.implementation={kernel!r}' in message
  assert f'({without})' in message
  having = next(n for n in CAUSAL
                if kernel in attention.get(n).capabilities.fused_kernels)
  config_check.check_config(_config(attention=without, cross_attention=having,
                                    implementation=kernel))


@pytest.mark.parametrize('model, message', [
    ({'num_kv_heads': 3}, 'config.model.num_kv_heads=3'),
    ({'position_scheme': 'rotary'},
     "config.model.position_scheme.*'rotary'.*valid choices"),
    ({'position_scheme': 'rope', 'qkv_dim': 60, 'num_heads': 4},
     "config.model.position_scheme='rope'.*odd"),
    ({'attention': 'flash'},
     "config.model.attention: .*'flash'.*valid choices"),
    ({'implementation': 'triton'}, "config.model.implementation='triton'"),
])
def test_bad_settings_name_the_field(model, message):
  with pytest.raises(ValueError, match=message):
    config_check.check_config(_config(**model))
