"""Undefined combinations are refused before anything is compiled, naming the
field and the valid choices; what is refused follows from the registries."""

import glob
import importlib
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from attention_jax import attention
from attention_jax.ablation import study
from attention_jax.attention import frame
from attention_jax.attention import positions
from attention_jax.train import config_check
from experiments.configs import bible
from experiments.configs import smoke

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
  with pytest.raises(config_check.ConfigError) as error:
    config_check.check_config(config)
  return str(error.value)


def test_launch_prints_a_refused_config_without_a_traceback(tmp_path):
  result = subprocess.run(
      [sys.executable, 'launch.py', '--config=experiments/configs/mqar.py',
       f'--workdir={tmp_path}', '--config.data.max_len=32'],
      cwd=_REPO, capture_output=True, text=True, check=False,
  )
  assert result.returncode == 1
  assert ('ConfigError: config.data.lengths=(64,) exceed '
          'config.data.max_len=32') in result.stderr
  assert 'Traceback' not in result.stderr


def _place(name):
  """Config overrides that put mechanism `name` everywhere it can go."""
  caps = attention.get(name).capabilities
  return {place: name for place, able in (
      ('decoder_self_attention', caps.causal),
      ('encoder_self_attention', caps.bidirectional),
      ('cross_attention', caps.cross_attention)) if able}


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


# One nonsense value per field of config_check.RANGES (and of the types it
# refuses), each of which used to pass the check.
_OUT_OF_RANGE = [
    ('seed', -1), ('seed', 2**32),
    ('data.vocab_size', 3), ('data.max_len', 1), ('data.max_len', 0),
    ('model.emb_dim', 0), ('model.num_heads', 0), ('model.num_heads', -4),
    ('model.num_kv_heads', -1), ('model.num_encoder_layers', 0),
    ('model.num_decoder_layers', 0), ('model.qkv_dim', 0),
    ('model.mlp_dim', 0), ('model.dropout_rate', 1.0),
    ('model.dropout_rate', -0.1), ('model.attention_dropout_rate', 1.5),
    ('model.dropout_rate', float('nan')),
    ('optimizer.learning_rate', 0.0), ('optimizer.learning_rate', -1e-3),
    ('optimizer.learning_rate', float('inf')),
    ('optimizer.warmup_steps', -1), ('optimizer.beta1', 1.0),
    ('optimizer.beta2', -0.5), ('optimizer.eps', -1e-9),
    ('optimizer.weight_decay', -0.1), ('optimizer.grad_clip_norm', 0.0),
    ('label_smoothing', 1.0), ('label_smoothing', -0.1),
    ('batch_size', 0), ('micro_batches', 0), ('mesh.data', 0),
    ('mesh.fsdp', -2), ('num_train_steps', 0), ('max_train_seconds', -1),
    ('log_every', 0), ('eval_every', 0), ('checkpoint_every', -5),
    ('keep_checkpoints', 0), ('eval.beam_size', 0), ('eval.beam_size', -1),
    ('eval.length_penalty', -0.6), ('eval.max_decode_len', 0),
    ('eval.decode_batch_size', 0), ('eval.bleu_sentences', -1),
    ('eval.final_sentences', -1),
]


def _with(name: str, value):
  config = smoke.get_config()
  group, _, field = name.rpartition('.')
  parent = config[group] if group else config
  with parent.ignore_type():
    parent[field] = value
  return config


@pytest.mark.parametrize('name, value', _OUT_OF_RANGE)
def test_out_of_range_values_are_refused_naming_field_and_range(name, value):
  message = _refusal(_with(name, value))
  assert message.startswith(f'config.{name}={value!r} is out of range; it '
                            f'must be {config_check.RANGES[name]}.')


@pytest.mark.parametrize('name, value', [
    ('eval.beam_size', True), ('batch_size', 16.0), ('model.num_heads', '4'),
])
def test_values_of_the_wrong_type_are_refused(name, value):
  assert f'config.{name}={value!r} is out of range' in _refusal(
      _with(name, value))


def test_every_numeric_field_of_bible_has_a_range():
  flat = {}

  def walk(tree, prefix=''):
    for key, value in tree.items():
      if isinstance(value, dict):
        if key not in ('options', 'position_options', 'rules'):
          walk(value, f'{prefix}{key}.')
      else:
        flat[f'{prefix}{key}'] = value

  walk(bible.get_config().to_dict())
  numeric = {name for name, value in flat.items()
             if isinstance(value, (int, float)) and not isinstance(value, bool)}
  assert numeric == set(config_check.RANGES)
  assert str(config_check.RANGES['eval.beam_size']) == 'an integer >= 1'
  assert str(config_check.RANGES['mesh.data']) == (
      'an integer >= 1, or -1 (the rest of the devices)')
  assert str(config_check.RANGES['model.dropout_rate']) == (
      'a number in [0, 1)')


def _shipped_configs():
  for path in sorted(glob.glob(os.path.join(_REPO, 'experiments', 'configs',
                                            '*.py'))
                     + sorted(glob.glob(os.path.join(
                         _REPO, 'experiments', 'ablations', '*.py')))):
    if os.path.basename(path) == '__init__.py':
      continue
    module = importlib.import_module(
        os.path.relpath(path, _REPO)[:-3].replace(os.sep, '.'))
    if not hasattr(module, 'get_config'):
      continue
    yield path, module.get_config()
    loaded = study.load_if_study(path)
    for point in loaded.points if loaded else ():
      yield f'{path} {point.name}', loaded.point_config(point)


def test_shipped_configs_and_sweep_points_are_in_range():
  checked = 0
  for where, config in _shipped_configs():
    try:
      config_check.check_ranges(config)
    except ValueError as e:
      raise AssertionError(f'{where}: {e}') from None
    checked += 1
  assert checked > 10
