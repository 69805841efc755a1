"""Diagnostic tasks for a decoder-only model: minutes on a 2-core CPU.

Presets, chosen after a colon (config_flags passes the text to get_config):
  mqar (default): multi-query associative recall (Arora et al., 2023,
    Zoology), 8 key-value pairs in 64 tokens, vocabulary 64.
    python launch.py --config=experiments/configs/mqar.py --workdir=workdirs/mqar
  selective_copy: copy 8 tokens scattered among blanks in 64 tokens (Poli et
    al., 2024, MAD).
    python launch.py --config=experiments/configs/mqar.py:selective_copy --workdir=workdirs/selective_copy
  noisy_recall: associative recall of 8 pairs with noise tokens interleaved
    (MAD).
    python launch.py --config=experiments/configs/mqar.py:noisy_recall --workdir=workdirs/noisy_recall
The mechanism is any causal-capable one of the registry, e.g.
`--config.model.attention=gla`. Results: test answer accuracy, overall and
per length and item count (attention_jax/train/diagnostic_task.py).
"""

import ml_collections

from experiments.configs import bible


def get_config(arg=None) -> ml_collections.ConfigDict:
  """The diagnostic task of preset `arg` (None or '' is 'mqar').

  Raises:
    ValueError: `arg` is no preset, naming the valid ones.
  """
  preset = arg or 'mqar'
  if preset not in PRESETS:
    raise ValueError(
        f'Unknown preset {preset!r} of experiments/configs/mqar.py; valid '
        f'presets are: {", ".join(PRESETS)}.')
  config = bible.get_config('smoke')
  config.task = preset
  config.data = ml_collections.ConfigDict()
  # Token ids 0..vocab_size-1; 0 is padding (attention_jax/diagnostics).
  config.data.vocab_size = 64
  # Training mixes every (length, item count) that fits; the test scores
  # each. Items are key-value pairs (recall) or tokens to copy.
  config.data.lengths = (64,)
  config.data.num_items = (8,)
  # Keys queried per recall sequence; 0: every key.
  config.data.num_queries = 0
  # Longest sequence: the model's position table; rows are padded to it.
  config.data.max_len = 64
  # Sequences of every setting in the validation and test sets.
  config.data.valid_examples = 128
  config.data.test_examples = 512
  config.eval = ml_collections.ConfigDict()
  config.eval.average_checkpoints = 0

  config.model.num_encoder_layers = 0
  config.model.num_decoder_layers = 2
  config.model.emb_dim = 64
  config.model.qkv_dim = 64
  config.model.mlp_dim = 128
  config.model.num_heads = 4
  config.model.dropout_rate = 0.0
  config.model.attention_dropout_rate = 0.0
  config.label_smoothing = 0.0
  config.optimizer.learning_rate = 3e-3
  config.optimizer.warmup_steps = 100
  config.optimizer.weight_decay = 0.0
  config.batch_size = 64
  config.num_train_steps = 1000
  config.max_train_seconds = 0
  config.log_every = 50
  config.eval_every = 250
  config.checkpoint_every = 250
  return config


# The presets: the same model and budget on each task.
PRESETS = ('mqar', 'selective_copy', 'noisy_recall')
