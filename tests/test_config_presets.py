"""bible.py's presets, chosen as config_flags passes them: FILE:PRESET."""

from absl import flags
from ml_collections import config_flags
import pytest

from attention_jax.ablation import runner
from attention_jax.ablation import study as study_lib
from experiments.ablations import attention
from experiments.configs import bible
from experiments.configs import smoke

_FILE = 'experiments/configs/bible.py'


def _parse(value: str, *overrides: str):
  """The config of `--config=value` and overrides, parsed as launch.py does."""
  argv = ['launch.py', f'--config={value}', *overrides]
  flag_values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file(
      'config', None, 'Experiment config file.', flag_values=flag_values,
      lock_config=True, sys_argv=argv)
  flag_values(argv)
  return holder.value


@pytest.mark.parametrize('preset', ['small', 'smoke'])
def test_preset_after_the_colon_is_that_preset(preset):
  default = _parse(_FILE)
  chosen = _parse(f'{_FILE}:{preset}')
  assert chosen.to_dict() == bible.get_config(preset).to_dict()
  assert chosen.model.emb_dim < default.model.emb_dim
  assert chosen.num_train_steps < default.num_train_steps
  assert default.to_dict() == _parse(f'{_FILE}:default').to_dict()


def test_overrides_apply_on_top_of_a_preset():
  config = _parse(f'{_FILE}:small', '--config.model.num_heads=8')
  assert config.model.num_heads == 8
  assert config.model.emb_dim == bible.get_config('small').model.emb_dim


def test_smoke_file_is_the_smoke_preset():
  assert smoke.get_config().to_dict() == _parse(f'{_FILE}:smoke').to_dict()


def test_unknown_preset_names_the_valid_ones():
  # absl wraps the config's ValueError; its message reaches the user whole.
  with pytest.raises(flags.IllegalFlagValueError,
                     match=r"preset 'tiny'.* are: default, small, smoke"):
    _parse(f'{_FILE}:tiny')


def test_a_study_file_takes_a_preset_into_its_points():
  study = study_lib.load('experiments/ablations/attention.py:smoke')
  assert study.base_config.to_dict() == attention.get_config('smoke').to_dict()
  assert study.base_config.to_dict() != attention.get_config().to_dict()
  command = runner.point_command(study, 'w', study.points[0], [], 0)
  assert '--config=experiments/ablations/attention.py:smoke' in command
