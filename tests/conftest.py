"""Test setup: 8 simulated CPU devices, set before JAX starts, and rank
promotion refused, so that a silent broadcast of mismatched ranks is an error.
"""

import os
import shutil
import sys
import tempfile

import pytest

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
)
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Training records the host's matmul peak under the user's cache directory
# (train/flops.py); tests and the runs they start keep theirs apart.
os.environ['XDG_CACHE_HOME'] = tempfile.mkdtemp(prefix='attention_jax_cache_')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update('jax_numpy_rank_promotion', 'raise')


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A TFDS data dir holding the Bible dataset and the smoke vocabulary.

  Prepared once per session, before any test starts a training subprocess.
  """
  if shutil.which('mod2imp') is None:
    pytest.skip('needs the SWORD modules: apt-get install sword-text-sparv '
                'sword-text-web libsword-utils')
  # Imported here, after the device settings above.
  from attention_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from experiments.configs import smoke  # pylint: disable=g-import-not-at-top

  path = str(tmp_path_factory.mktemp('tensorflow_datasets'))
  config = smoke.get_config()
  config.data.data_dir = path
  input_pipeline.load(config.data, str(tmp_path_factory.mktemp('prepare')))
  return path
