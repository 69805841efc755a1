"""A parallel_text corpus written by a test, and a config that trains on it
in seconds."""

import os
import random

import ml_collections

from experiments.configs import parallel_text as parallel_text_config
from experiments.configs import smoke

_WORDS = ('casa perro gato arbol pajaro rio ciudad jardin viejo joven rapido '
          'lento rojo verde azul grande pequeno ve encuentra compra').split()


def write_tsv(path, seed: int, count: int = 200, extra: tuple = ()) -> None:
  """`count` toy es<TAB>en lines, then `extra` ones; another seed gives
  another corpus."""
  rng = random.Random(seed)
  lines = []
  for index in range(count):
    words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 7))]
    lines.append(f'{" ".join(words)} {seed}{index}.\t'
                 f'{" ".join(w.upper() for w in words)} {seed}{index}.\n')
  lines += [f'{source}\t{target}\n' for source, target in extra]
  path.write_text(''.join(lines))


def config(directory) -> ml_collections.ConfigDict:
  """A 2-step run on TSV files written into `directory`."""
  os.makedirs(directory, exist_ok=True)
  result = parallel_text_config.get_config()
  smoke_config = smoke.get_config()
  result.model, result.eval = smoke_config.model, smoke_config.eval
  result.data.vocab_size = 100
  result.data.max_len = 32
  result.data.data_dir = str(directory / 'data_dir')
  for split in ('train', 'validation', 'test'):
    write_tsv(directory / f'{split}.tsv', seed=len(split))
    result.data[split] = str(directory / f'{split}.tsv')
  result.batch_size = 8
  result.num_train_steps = 2
  result.log_every = result.checkpoint_every = result.eval_every = 2
  result.eval.valid_bleu = False
  result.eval.final_sentences = 2
  result.eval.beam_size = 1
  result.eval.max_decode_len = 8
  result.eval.decode_batch_size = 8
  return result
