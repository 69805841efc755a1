"""Test setup: 8 simulated CPU devices, set before JAX starts, and rank
promotion refused, so that a silent broadcast of mismatched ranks is an error.
"""

import atexit
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
# XLA's compiled programs are kept on disk for the session (JAX's persistent
# compilation cache, keyed by the program's content): the many launch.py
# runs that tests start in subprocesses compile the same smoke-config steps,
# and a run that finds them there starts about 40% sooner (23 -> 14 s for a
# 20-step smoke run). The directory is made by the first process (pytest,
# or xdist's controller), inherited by its workers and their subprocesses,
# and removed when that process exits. Loaded programs answer as_text,
# cost_analysis and memory_analysis as freshly compiled ones do.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _XLA_CACHE = tempfile.mkdtemp(prefix='attention_jax_xla_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _XLA_CACHE
  atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
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
