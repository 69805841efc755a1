"""The bible pipeline at toy size: under 3 minutes on a 2-core CPU.

Run with:
  python launch.py --config=experiments/configs/smoke.py --workdir=workdirs/smoke
"""

import ml_collections

from experiments.configs import bible


def get_config(arg=None) -> ml_collections.ConfigDict:
  config = bible.get_config(arg)
  config.data.vocab_size = 1000
  config.data.max_len = 64
  config.model.emb_dim = 64
  config.model.num_heads = 4
  config.model.num_encoder_layers = 1
  config.model.num_decoder_layers = 1
  config.model.qkv_dim = 64
  config.model.mlp_dim = 128
  config.optimizer.learning_rate = 3e-3
  config.optimizer.warmup_steps = 50
  config.batch_size = 16
  config.num_train_steps = 300
  config.log_every = 50
  config.eval_every = 200
  config.checkpoint_every = 100
  config.eval.beam_size = 2
  config.eval.max_decode_len = 64
  config.eval.decode_batch_size = 32
  config.eval.bleu_sentences = 64
  return config
