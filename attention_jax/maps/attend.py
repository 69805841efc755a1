"""`--mode=attend`: attention maps of sentences read from stdin.

Each line is a source sentence, or a source and a reference separated by a
tab. A sentence is teacher-forced through the model with its reference as
the target when it has one, and otherwise with the model's own translation
(beam search with the run's eval settings). Written under the output
directory (default WORKDIR/attention_maps):

  index.json          per sentence: source, target, whether the target is
                      the 'reference' or the 'translation', its directory;
                      the mechanism of every map, and the layers without
                      maps (mechanisms that form no weights)
  NNNN/weights.npz    one float32 array per map name (capture.py), H x Q x K
                      cropped to real tokens, and 'source_pieces',
                      'target_pieces', 'decoder_input_pieces' (str arrays)
  NNNN/<map>.png      one panel per head (map name with '/' as '_')
  NNNN/alignment.png  the last decoder layer's cross-attention averaged
                      over heads (Bahdanau et al., 2015, Fig. 3)

Blank lines are skipped; sources and targets longer than the model's
max_len are cut to max_len - 1 pieces and EOS, as translation cuts them.
"""

import json
import os
from typing import Iterable, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np
import sentencepiece as spm

from attention_jax import sharding
from attention_jax import translate
from attention_jax.data import tokenizer
from attention_jax.decode.translator import translator_for
from attention_jax.maps import capture
from attention_jax.maps import figures
from attention_jax.model.config import TransformerConfig


def parse_lines(lines: Iterable[str]) -> list[tuple[str, str | None]]:
  """(source, reference or None) of each non-blank line."""
  pairs = []
  for line in lines:
    source, _, reference = line.rstrip('\n').partition('\t')
    if source.strip():
      pairs.append((source, reference if reference.strip() else None))
  return pairs


def encode_cut(sp: spm.SentencePieceProcessor, text: str, max_len: int):
  """int32 ids of `text` and EOS, cut to `max_len` as translation cuts."""
  ids = sp.encode(text)[:max_len - 1]
  return np.asarray(ids + [tokenizer.EOS_ID], np.int32)


def _pieces(sp: spm.SentencePieceProcessor, ids) -> list[str]:
  return [sp.id_to_piece(int(i)) for i in ids]


def write_sentence(directory: str, maps: dict[str, np.ndarray],
                   mechanisms: dict[str, str], source_pieces: Sequence[str],
                   target_pieces: Sequence[str]) -> None:
  """weights.npz, one PNG per map and the alignment figure of one sentence.

  Args:
    directory: where to write (created).
    maps: {map name: [H, Q, K]} cropped to real tokens.
    mechanisms: {map name: mechanism name}, for titles.
    source_pieces: S pieces, EOS included.
    target_pieces: T pieces, EOS included.
  """
  os.makedirs(directory, exist_ok=True)
  # Decoder input t is the piece before target t; BOS is id 0.
  inputs = ['<bos>'] + list(target_pieces[:-1])
  np.savez(os.path.join(directory, 'weights.npz'),
           source_pieces=np.asarray(source_pieces),
           target_pieces=np.asarray(target_pieces),
           decoder_input_pieces=np.asarray(inputs), **maps)
  labels = {'encoder': (source_pieces, source_pieces),
            'self': (target_pieces, inputs),
            'cross': (target_pieces, source_pieces)}
  for name, weights in maps.items():
    kind = 'encoder' if name.startswith('encoder') else name.split('/')[-1]
    figures.write_heads(
        os.path.join(directory, name.replace('/', '_') + '.png'), weights,
        *labels[kind], f'{name} ({mechanisms[name]})')
  crosses = sorted(name for name in maps if name.endswith('/cross'))
  if crosses:
    last = max(crosses, key=lambda n: int(n.split('/')[1].split('_')[1]))
    figures.write_alignment(
        os.path.join(directory, 'alignment.png'), maps[last], target_pieces,
        source_pieces, f'{last}, mean over heads ({mechanisms[last]})')


def write_maps(out_dir: str, cfg: TransformerConfig, params,
               sp: spm.SentencePieceProcessor,
               sentences: Sequence[tuple[str, str, str]]) -> dict:
  """Captures and writes the maps of (source, target, target kind) triples.

  Returns:
    The index written as out_dir/index.json.
  """
  mechanisms = capture.map_names(cfg)
  missing = capture.without_weights(cfg)
  for name, mechanism in missing.items():
    print(f'{name}: {mechanism} forms no attention weights (it never '
          'builds a query-by-key matrix); no map is written for it.')
  sources = [encode_cut(sp, s, cfg.max_len) for s, _, _ in sentences]
  targets = [encode_cut(sp, t, cfg.max_len) for _, t, _ in sentences]
  all_maps = (capture.sentence_maps(cfg, params, sources, targets)
              if len(missing) < len(mechanisms) else [{}] * len(sentences))
  index = {'mechanisms': mechanisms, 'without_weights': missing,
           'sentences': []}
  for n, ((source, target, kind), maps) in enumerate(zip(sentences,
                                                         all_maps)):
    directory = f'{n:04d}'
    if jax.process_index() == 0:
      write_sentence(os.path.join(out_dir, directory), maps, mechanisms,
                     _pieces(sp, sources[n]), _pieces(sp, targets[n]))
    index['sentences'].append({'source': source, 'target': target,
                               'target_is': kind, 'directory': directory})
  if jax.process_index() == 0:
    with open(os.path.join(out_dir, 'index.json'), 'w') as f:
      json.dump(index, f, indent=1, ensure_ascii=False)
  return index


def attend(workdir: str, lines: Iterable[str], out_dir: str | None = None):
  """Maps of `lines` (see the module docstring) with `workdir`'s model.

  Returns:
    The index written as index.json.

  Raises:
    FileNotFoundError: when `workdir` holds no trained run.
  """
  out_dir = out_dir or os.path.join(workdir, 'attention_maps')
  mesh = sharding.make_mesh(ml_collections.ConfigDict({'data': -1, 'fsdp': 1}))
  config, cfg, sp, params = translate.load_params(workdir, mesh)
  pairs = parse_lines(lines)
  untranslated = [source for source, reference in pairs if reference is None]
  translations = iter(
      translator_for(config, cfg, mesh).translate(params, sp, untranslated)
      if untranslated else [])
  sentences = [(source, reference, 'reference') if reference is not None
               else (source, next(translations), 'translation')
               for source, reference in pairs]
  os.makedirs(out_dir, exist_ok=True)
  index = write_maps(out_dir, cfg, params, sp, sentences)
  logging.info('Wrote attention maps of %d sentences to %s.', len(sentences),
               out_dir)
  return index
