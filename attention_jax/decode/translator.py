"""Beam-search translation of token batches with a trained Transformer."""

import time
from typing import Sequence

from absl import logging

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections
import numpy as np
import sentencepiece as spm

from attention_jax import progress
from attention_jax import sharding
from attention_jax.attention import frame
from attention_jax.data import batches
from attention_jax.data import tokenizer
from attention_jax.decode import beam_search
from attention_jax.model.config import TransformerConfig
from attention_jax.model.transformer import Transformer


def predict(
    params,
    inputs_BxS,
    *,
    cfg: TransformerConfig,
    beam_size: int,
    alpha: float,
    max_decode_len: int,
):
  """Best beam-search hypothesis per source row, [B, max_decode_len]."""
  model = Transformer(cfg.replace(deterministic=True, decode=False))
  decoder = Transformer(cfg.replace(deterministic=True, decode=True))
  encoded = model.apply({'params': params}, inputs_BxS, method=Transformer.encode)
  segments = (inputs_BxS != 0).astype(jnp.int32)
  encoded_N, segments_N = beam_search.expand_to_beams(
      (encoded, segments), beam_size
  )
  creation_tokens = jnp.zeros((encoded_N.shape[0], max_decode_len), jnp.int32)
  _, variables = decoder.apply(
      {'params': params}, encoded_N, segments_N, creation_tokens,
      method=Transformer.decode, mutable=['cache', frame.MEMORY],
  )
  # The projected encoder memory is the same for every beam of a sentence:
  # read by each step, never reordered.
  memory = variables.get(frame.MEMORY, {})

  def tokens_to_logits(last_tokens_N, cache):
    logits, updated = decoder.apply(
        {'params': params, 'cache': cache, frame.MEMORY: memory}, encoded_N,
        segments_N, last_tokens_N[:, None], method=Transformer.decode,
        mutable=['cache'],
    )
    return logits[:, 0], updated['cache']

  sequences, _ = beam_search.beam_search(
      tokens_to_logits,
      variables['cache'],
      inputs_BxS.shape[0],
      beam_size=beam_size,
      alpha=alpha,
      max_decode_len=max_decode_len,
      eos_id=tokenizer.EOS_ID,
  )
  return sequences[:, 0]


# How often `Translator.translate` logs its progress: a test split decodes
# silently for many minutes otherwise.
PROGRESS_EVERY_SECONDS = 30.0


def ids_to_text(sp: spm.SentencePieceProcessor, ids: np.ndarray) -> str:
  """Detokenises ids up to (not including) the first EOS."""
  ids = [int(i) for i in ids]
  if tokenizer.EOS_ID in ids:
    ids = ids[: ids.index(tokenizer.EOS_ID)]
  return sp.decode([i for i in ids if i != tokenizer.PAD_ID])


class Translator:
  """Translates sentences with sharded batches over every device."""

  def __init__(self, cfg: TransformerConfig, mesh: Mesh, *, beam_size: int,
               alpha: float, max_decode_len: int, batch_size: int):
    self._mesh = mesh
    self._max_len = cfg.max_len
    self._batch_size = batch_size
    self._predict = jax.jit(
        lambda params, inputs: predict(
            params, inputs, cfg=cfg, beam_size=beam_size, alpha=alpha,
            max_decode_len=max_decode_len,
        ),
        out_shardings=sharding.replicated(mesh),
    )

  def translate(self, params, sp: spm.SentencePieceProcessor,
                sentences: Sequence[str]) -> list[str]:
    """Translations of `sentences`, in their order.

    A blank (empty or whitespace-only) sentence translates to an empty line
    without reaching the model. A source longer than the model's max_len
    tokens (EOS included) is cut to its first max_len - 1 tokens and EOS; a
    warning counts them (see `count_truncated`).

    Process 0 logs sentences done and an ETA at most every
    PROGRESS_EVERY_SECONDS. The ETA goes by source tokens, since batches run
    shortest first and a long sentence takes longer to translate.
    """
    outputs = [''] * len(sentences)
    kept = [i for i, sentence in enumerate(sentences) if sentence.strip()]
    sources = _encode(sp, [sentences[i] for i in kept])
    truncated = sum(len(ids) > self._max_len for ids in sources)
    if truncated:
      logging.warning(
          'Truncated %d of %d source sentences longer than the model\'s '
          'max_len=%d tokens (EOS included; the larger of config.data.max_len '
          'and config.eval.max_decode_len) to their first %d tokens; their '
          'translations cover only that part.',
          truncated, len(sentences), self._max_len, self._max_len - 1,
      )
    rows = sharding.process_rows(self._mesh, self._batch_size)
    lengths = [min(len(ids), self._max_len) for ids in sources]
    start = last_report = time.perf_counter()
    sentences_done = tokens_done = 0
    for indices, tokens in batches.source_batches(
        sources, self._batch_size, self._max_len
    ):
      inputs = sharding.to_global({'inputs': tokens[rows]}, self._mesh)['inputs']
      # Replicated output: every process reads the whole batch locally.
      best = np.asarray(self._predict(params, inputs))
      for row, index in enumerate(indices):
        outputs[kept[index]] = ids_to_text(sp, best[row])
      sentences_done += len(indices)
      tokens_done += sum(lengths[i] for i in indices)
      # Timed once the batch is on the host: no device wait of its own.
      now = time.perf_counter()
      if (now - last_report >= PROGRESS_EVERY_SECONDS
          and sentences_done < len(sources) and jax.process_index() == 0):
        last_report = now
        logging.info(
            'Translated %d of %d sentences in %s; ETA %s.', sentences_done,
            len(sources), progress.format_seconds(now - start),
            progress.format_seconds(progress.eta_seconds(
                tokens_done, sum(lengths), now - start)),
        )
    return outputs

  def count_truncated(self, sp: spm.SentencePieceProcessor,
                      sentences: Sequence[str]) -> int:
    """How many of `sentences` `translate` cuts to the model's max_len."""
    return sum(len(ids) > self._max_len for ids in _encode(sp, sentences))


def _encode(sp: spm.SentencePieceProcessor,
            sentences: Sequence[str]) -> list[np.ndarray]:
  return [
      np.asarray(ids + [tokenizer.EOS_ID], np.int32)
      for ids in sp.encode(list(sentences))
  ]


def translator_for(config: ml_collections.ConfigDict, cfg: TransformerConfig,
                   mesh: Mesh) -> Translator:
  """The translator of an experiment config's `eval` settings."""
  return Translator(
      cfg,
      mesh,
      beam_size=config.eval.beam_size,
      alpha=config.eval.length_penalty,
      max_decode_len=config.eval.max_decode_len,
      batch_size=config.eval.decode_batch_size,
  )
