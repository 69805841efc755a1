"""Translation as a training task: packed sentence pairs, loss, BLEU.

The trainer's task interface (see train/tasks.py) for config.task =
'translation': the encoder-decoder Transformer on a parallel corpus,
validated by loss (and BLEU and chrF where config.eval.valid_bleu), tested
by translating the test split with beam search.
"""

import os
import time

import jax
import ml_collections

from attention_jax import progress
from attention_jax import run_records
from attention_jax.data import batches
from attention_jax.data import input_pipeline
from attention_jax.decode.translator import translator_for
from attention_jax.model import from_config
from attention_jax.model.transformer import Transformer
from attention_jax.train import evaluate
from attention_jax.train import steps


class TranslationTask:
  """The parallel corpus of config.data and what is scored on it."""

  model_class = Transformer
  # Source and target tokens.
  num_inputs = 2
  summed_loss = staticmethod(steps.summed_token_loss)
  eval_step = staticmethod(steps.eval_step)

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               resuming: bool):
    self._config = config
    self._data = input_pipeline.load(config.data, workdir, resuming=resuming)
    self.model_config = from_config.transformer_config(
        config, self._data.tokenizer.vocab_size())

  def train_stream(self, batch_size: int, rows: slice):
    return batches.PackedTrainStream(
        self._data.train, batch_size, self._config.data.max_len,
        self._config.seed, rows)

  def prepare_eval(self, mesh, rows: slice) -> None:
    """Validation batches and the beam-search translator, built once."""
    config = self._config
    self._mesh = mesh
    self._valid_batches = batches.packed_eval_batches(
        self._data.valid, config.batch_size, config.data.max_len, rows)
    self._translator = translator_for(config, self.model_config, mesh)
    self._bleu_pairs = self._data.valid_text[
        : config.eval.bleu_sentences or None]

  def valid_scores(self, eval_fn, params,
                   train_seconds: float) -> tuple[dict[str, float], str]:
    """Periodic validation: (scalars named valid/..., a log line)."""
    scores = evaluate.eval_loss(eval_fn, params, self._valid_batches,
                                self._mesh)
    scalars = {f'valid/{k}': v for k, v in scores.items()}
    valid_bleu = self._config.eval.valid_bleu
    if valid_bleu:
      valid_scores, _ = evaluate.translate_and_score(
          self._translator, params, self._data.tokenizer, self._bleu_pairs)
      scalars['valid/bleu'] = valid_scores.bleu
      scalars['valid/chrf'] = valid_scores.chrf
    line = 'valid loss %.3f | %s | trained %s' % (
        scores['loss'],
        f'valid BLEU ({len(self._bleu_pairs)} sentences) '
        f'{scalars["valid/bleu"]:.2f}' if valid_bleu else 'valid BLEU off',
        progress.format_seconds(train_seconds))
    return scalars, line

  def final_results(self, eval_fn, params, workdir: str) -> dict:
    """Full validation and test scores; translations written to the workdir."""
    config, data, translator = self._config, self._data, self._translator
    scores = evaluate.eval_loss(eval_fn, params, self._valid_batches,
                                self._mesh)
    results = {'eval_loss': scores['loss'],
               'eval_accuracy': scores['accuracy']}
    out_dir = os.path.join(workdir, 'translations')
    os.makedirs(out_dir, exist_ok=True)
    limit = config.eval.final_sentences or None
    splits = [('test', data.test_text[:limit])]
    if config.eval.valid_bleu:
      splits.insert(0, ('valid', data.valid_text[:limit]))
    for split, pairs in splits:
      start = time.perf_counter()
      sources, references = [s for s, _ in pairs], [t for _, t in pairs]
      verse_files = {}
      if data.verse_separator:
        # Chapters, window by window (chapter_scores.py): `{split}_bleu` and
        # the files score whole chapters; verse-level scores come beside.
        chapters, sources = evaluate.translate_and_score_chapters(
            translator, params, data.tokenizer, pairs, config.data.max_len,
            data.verse_separator)
        scores, hypotheses = chapters.chapter, chapters.chapter_hypotheses
        references = chapters.chapter_references
        results.update(chapters.results(split))
        verse_files = chapters.files(split)
      else:
        scores, hypotheses = evaluate.translate_and_score(
            translator, params, data.tokenizer, pairs
        )
      seconds = time.perf_counter() - start
      # Pieces of the detokenised output: the decoded tokens, less EOS.
      pieces = sum(len(ids) for ids in data.tokenizer.encode(hypotheses))
      results[f'{split}_bleu'] = scores.bleu
      results[f'{split}_chrf'] = scores.chrf
      # sacrebleu's signatures: how the scores were computed, as papers
      # quote.
      results[f'{split}_bleu_signature'] = scores.bleu_signature
      results[f'{split}_chrf_signature'] = scores.chrf_signature
      results[f'{split}_decode_seconds'] = seconds
      results[f'{split}_decode_tokens_per_sec'] = pieces / seconds
      # Sources cut to the model's max_len before decoding (see Translator).
      results[f'{split}_truncated_sources'] = translator.count_truncated(
          data.tokenizer, sources)
      if jax.process_index() == 0:
        run_records.write_text(os.path.join(out_dir, f'{split}.txt'),
                               ''.join(h + '\n' for h in hypotheses))
        # The references beside the translations, for significance tests.
        run_records.write_text(
            os.path.join(out_dir, f'{split}_references.txt'),
            ''.join(t + '\n' for t in references))
        for name, lines in verse_files.items():
          run_records.write_text(os.path.join(out_dir, name),
                                 ''.join(line + '\n' for line in lines))
    return results

  @staticmethod
  def final_scalars(results: dict) -> dict:
    """The results also logged to metrics.jsonl."""
    return {k: results[k]
            for k in ('test_bleu', 'valid_bleu', 'test_chrf', 'valid_chrf')
            if k in results}

  @staticmethod
  def summary(results: dict) -> str:
    return ('test BLEU %.2f, chrF %.2f, valid loss %.3f (BLEU %s; chrF %s)'
            % (results['test_bleu'], results['test_chrf'],
               results['eval_loss'], results['test_bleu_signature'],
               results['test_chrf_signature']))
