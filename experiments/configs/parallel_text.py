"""Your own corpus, from plain-text files, with bible.py's model and budget.

Run with aligned files (corpus/train.es + corpus/train.en, and so on):
  python launch.py --config=experiments/configs/parallel_text.py \\
    --workdir=workdirs/my_corpus --config.data.source=es \\
    --config.data.target=en --config.data.train=corpus/train \\
    --config.data.validation=corpus/valid --config.data.test=corpus/test

or with one `source<TAB>target` file per split:
  python launch.py --config=experiments/configs/parallel_text.py \\
    --workdir=workdirs/my_corpus --config.data.train=corpus/train.tsv \\
    --config.data.validation=corpus/valid.tsv \\
    --config.data.test=corpus/test.tsv

The formats are described in attention_jax/data/parallel_text.py. The
vocabulary is stored under config.data.data_dir, named after a hash of the
training files, so an edited corpus gets a vocabulary of its own.
"""

import ml_collections

from experiments.configs import bible


def get_config(arg=None) -> ml_collections.ConfigDict:
  """bible.py with the corpus read from files; `arg` is a bible.py preset."""
  config = bible.get_config(arg)
  config.data.dataset = 'parallel_text'
  # Language codes: the suffixes of aligned files, and part of the
  # vocabulary's name.
  config.data.source = 'es'
  config.data.target = 'en'
  # One path per split: a `.tsv` file, or the PREFIX of PREFIX.<source> and
  # PREFIX.<target>. All three are required.
  config.data.train = ''
  config.data.validation = ''
  config.data.test = ''
  return config
