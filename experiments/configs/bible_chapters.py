"""Spanish -> English Bible chapters: translation of long contexts.

The corpus is `bible_chapters_es_en` (attention_jax/data/bible_chapters.py):
the verses of `bible_es_en`, same splits, one example per chapter, verses
joined by a separator piece. Chapters run from a few hundred to several
thousand pieces; training sees windows of whole verses of at most `max_len`
pieces (attention_jax/data/verse_windows.py), and a test chapter is
translated whole when its source fits, else window by window, the windows'
translations joined. Scores (results.json): `test_bleu`/`test_chrf` and
`test_chapter_*` of whole chapters, `test_verse_bleu`/`test_verse_chrf`
verse by verse against the sentence-level references, and
`test_chapters_misaligned` (chapter_scores.py says how those are scored).

The model is bible.py's `small` (2+2 layers of width 128) with exact softmax
attention computed in blocks (`chunked`), so memory grows linearly with the
row. Every preset trains on about 8k target-side tokens a step.

Presets, the row length in pieces, chosen after a colon:
  1024 (the default): 8 rows a step.
    python launch.py --config=experiments/configs/bible_chapters.py:1024 --workdir=workdirs/chapters_1024
  2048: 4 rows a step, in 2 micro-batches.
    python launch.py --config=experiments/configs/bible_chapters.py:2048 --workdir=workdirs/chapters_2048
  4096: 2 rows a step, in 2 micro-batches.
    python launch.py --config=experiments/configs/bible_chapters.py:4096 --workdir=workdirs/chapters_4096
Override any field of any preset, e.g. `--config.model.attention=linear`.
"""

import ml_collections

from experiments.configs import bible

# Preset -> (rows per step, micro-batches per step).
PRESETS = {'1024': (8, 1), '2048': (4, 2), '4096': (2, 2)}


def get_config(arg=None) -> ml_collections.ConfigDict:
  """The experiment at the row length `arg` (None or '' is '1024').

  Raises:
    ValueError: `arg` is no preset, naming the valid ones.
  """
  preset = arg or '1024'
  if preset not in PRESETS:
    raise ValueError(
        f'Unknown preset {preset!r} of experiments/configs/bible_chapters.py; '
        f'valid presets are: {", ".join(PRESETS)} (e.g. '
        '--config=experiments/configs/bible_chapters.py:2048).'
    )
  max_len = int(preset)
  config = bible.get_config('small')
  config.data.dataset = 'bible_chapters_es_en'
  # Row length and the longest window of verses trained on, in pieces.
  config.data.max_len = max_len
  config.batch_size, config.micro_batches = PRESETS[preset]
  # Exact softmax in blocks of 256 queries and keys: O(L * 256) memory.
  config.model.attention = 'chunked'
  config.model.options.chunked.chunk_size = 256
  # For `--config.model.attention=local` (a window of 128 pieces, a few
  # verses) and the kernelised mechanisms: sums in chunks of 256.
  config.model.options.local.window_size = 128
  for name in ('local', 'linear', 'performer'):
    config.model.options[name].chunk_size = 256
  config.num_train_steps = 3_000
  config.max_train_seconds = 1800
  # A step is about 8k target pieces: on one core of the project's 2-core
  # CPU, 8 s with exact attention at 1024, so the 1800 s budget is about
  # 220 steps (more for the linear mechanisms), and the sentence-level
  # warm-up of 400 steps would not end in it (the learning rate at step 100
  # was a quarter of its peak).
  config.optimizer.warmup_steps = 50
  config.log_every = 50
  config.eval_every = 500
  config.checkpoint_every = 500
  # Periodic validation is by loss (on windows); the final evaluation
  # translates the test chapters.
  config.eval.valid_bleu = False
  config.eval.beam_size = 2
  # A window's translation may be longer than its source: a quarter more
  # before it is cut (a cut translation loses verses and is misaligned).
  config.eval.max_decode_len = max_len + max_len // 4
  config.eval.decode_batch_size = 8
  return config
