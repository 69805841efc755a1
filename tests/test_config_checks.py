"""Undefined combinations are refused when the config is built."""

import pytest

from attention_jax.model import from_config
from experiments.configs import smoke


def _config(**model):
  config = smoke.get_config()
  config.model.update(model)
  return config


def test_default_and_per_place_choices_are_accepted():
  from_config.check_config(_config())
  from_config.check_config(_config(cross_attention='no_attention'))
  from_config.check_config(
      _config(attention='linear', position_scheme='rope')
  )


def test_non_causal_mechanism_in_the_decoder_is_refused():
  with pytest.raises(ValueError) as error:
    from_config.check_config(_config(attention='no_attention'))
  message = str(error.value)
  assert "config.model.attention='no_attention'" in message
  assert 'decoder self-attention' in message
  assert 'dot_product' in message and 'no_attention,' not in message


def test_score_bias_with_a_mechanism_without_scores_is_refused():
  with pytest.raises(ValueError) as error:
    from_config.check_config(
        _config(encoder_self_attention='linear', position_scheme='alibi')
    )
  message = str(error.value)
  assert "config.model.encoder_self_attention='linear'" in message
  assert 'encoder self attention' in message
  assert 'dot_product' in message and 'rope' in message


@pytest.mark.parametrize('model, field', [
    ({'num_kv_heads': 3}, 'num_kv_heads'),
    ({'position_scheme': 'rotary'}, 'position_scheme'),
    ({'position_scheme': 'rope', 'qkv_dim': 60, 'num_heads': 4}, 'rope'),
    ({'position_scheme': 'relative_bias', 'relative_max_distance': 8},
     'relative_max_distance'),
    ({'attention': 'flash'}, 'valid choices'),
    ({'implementation': 'triton'}, 'implementation'),
])
def test_bad_settings_name_the_field(model, field):
  with pytest.raises(ValueError, match=field):
    from_config.check_config(_config(**model))
