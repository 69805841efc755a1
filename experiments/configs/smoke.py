"""The bible pipeline at toy size: under 3 minutes on a 2-core CPU.

The `smoke` preset of experiments/configs/bible.py, under the file name that
older commands and the tests use. Run with:
  python launch.py --config=experiments/configs/smoke.py --workdir=workdirs/smoke
"""

import ml_collections

from experiments.configs import bible


def get_config(arg=None) -> ml_collections.ConfigDict:
  """bible.py's `smoke` preset; `arg` is unused."""
  del arg
  return bible.get_config('smoke')
