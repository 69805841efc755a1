"""Parallel corpora selectable by `config.data.dataset`."""

from typing import Callable

import ml_collections

from attention_jax.data import bible

SPLITS = ('train', 'validation', 'test')

# Each loader maps (split, data_dir) to (language -> sentence) pairs.
_LANGUAGES = {'bible_es_en': ('es', 'en')}
_LOADERS: dict[str, Callable[[str, str], list[tuple[str, str]]]] = {
    'bible_es_en': bible.load_pairs,
}


def load_splits(
    data_config: ml_collections.ConfigDict, data_dir: str
) -> dict[str, list[tuple[str, str]]]:
  """(source, target) sentence pairs of every split, in stored order."""
  name = data_config.dataset
  if name not in _LOADERS:
    raise ValueError(
        f'Unknown config.data.dataset={name!r}; valid choices are: '
        f'{", ".join(sorted(_LOADERS))}.'
    )
  languages = _LANGUAGES[name]
  wanted = (data_config.source, data_config.target)
  if sorted(wanted) != sorted(languages) or wanted[0] == wanted[1]:
    raise ValueError(
        f'Dataset {name!r} pairs {languages[0]!r} with {languages[1]!r}; '
        f'set config.data.source/target to those, got {wanted}.'
    )
  flip = wanted != languages
  return {
      split: [(b, a) if flip else (a, b) for a, b in _LOADERS[name](split, data_dir)]
      for split in SPLITS
  }
