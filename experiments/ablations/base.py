"""The base config of the shipped studies: the Bible task at CPU-study size.

A 2+2-layer Transformer of width 128 (1.4M parameters, vocabulary 4000)
trained for 800 steps of 16 packed rows x 64 tokens: about 100 s of training
on the 2-core CPU, so a study of 27 points (9 variants x 3 seeds) fits in an
hour. At this size BLEU is low in absolute terms; the studies compare
mechanisms at one budget, they do not chase the default run's 22.9.
"""

import ml_collections

from experiments.configs import bible


def get_config(arg=None) -> ml_collections.ConfigDict:
  config = bible.get_config(arg)
  config.data.vocab_size = 4000
  config.data.max_len = 64
  config.model.emb_dim = 128
  config.model.qkv_dim = 128
  config.model.mlp_dim = 512
  config.model.num_heads = 4
  config.model.num_encoder_layers = 2
  config.model.num_decoder_layers = 2
  # At 64-token rows the defaults (window 64, chunks of 512) would make
  # local and chunked attention compute exactly full attention; these make
  # them differ. The kernelised mechanisms keep their sums in chunks of 16.
  config.model.options.local.window_size = 16
  for name in ('local', 'chunked', 'linear', 'performer'):
    config.model.options[name].chunk_size = 16
  config.optimizer.learning_rate = 3e-3
  config.optimizer.warmup_steps = 150
  config.batch_size = 16
  # The equal budget of every point (launch.py --equal_time=SECONDS switches
  # a study to equal training time instead).
  config.num_train_steps = 800
  config.max_train_seconds = 0
  config.log_every = 50
  config.eval_every = 100
  config.checkpoint_every = 200
  config.eval.valid_bleu = False
  config.eval.beam_size = 2
  config.eval.max_decode_len = 96
  config.eval.decode_batch_size = 128
  return config
