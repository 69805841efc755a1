"""English -> German on WMT14: the base Transformer of Vaswani et al. (2017).

Run with:
  python launch.py --config=experiments/configs/wmt14_base.py \\
    --workdir=workdirs/wmt14_base --config.data.data_dir=DIR

DIR (default ~/tensorflow_datasets) holds `wmt14_translate/de-en` prepared
as array_record. Preparing it needs TensorFlow (`pip install tensorflow`):
the run does it when TensorFlow is installed; otherwise prepare it elsewhere
(see attention_jax/data/wmt14.py) and point DIR at the result. Training reads newstest2013 for validation; the
final BLEU (sacrebleu) is on all of newstest2014, the test split.
"""

import ml_collections

from experiments.configs import bible


def get_config(arg=None) -> ml_collections.ConfigDict:
  """The paper's base model and training recipe; `arg` is unused."""
  del arg
  config = bible.get_config()

  config.data.dataset = 'wmt14_translate/de-en'
  config.data.source = 'en'
  config.data.target = 'de'
  # One sentencepiece vocabulary shared by both languages (the paper: a
  # shared byte-pair vocabulary of about 37,000 tokens).
  config.data.vocab_size = 32_000
  config.data.max_len = 256

  config.model.attention = 'softmax'
  config.model.position_scheme = 'sinusoidal'
  config.model.emb_dim = 512
  config.model.num_heads = 8
  config.model.num_encoder_layers = 6
  config.model.num_decoder_layers = 6
  config.model.qkv_dim = 512
  config.model.mlp_dim = 2048
  # The paper's P_drop, on embeddings and on each sub-layer's output (the
  # model also applies it to the feed-forward hidden units, which the paper
  # does not mention).
  config.model.dropout_rate = 0.1
  # The paper describes no dropout on attention weights.
  config.model.attention_dropout_rate = 0.0
  config.model.pre_layer_norm = False

  # The paper's lrate = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)
  # peaks at d_model^-0.5 * warmup^-0.5 = 7.0e-4 at step 4,000, and
  # optim.rsqrt_schedule is that curve with the peak given directly.
  config.optimizer.warmup_steps = 4_000
  config.optimizer.learning_rate = 512**-0.5 * 4_000**-0.5
  config.optimizer.beta1 = 0.9
  config.optimizer.beta2 = 0.98
  config.optimizer.eps = 1e-9
  config.optimizer.weight_decay = 0.0
  # The paper does not clip; optim.py always clips, at bible.py's 1.0 here.
  config.optimizer.grad_clip_norm = 1.0
  config.label_smoothing = 0.1

  # The paper's batches hold about 25,000 source and 25,000 target tokens.
  # A packed row has max_len = 256 token slots on each side, so 96 rows give
  # 96 * 256 = 24,576 slots per side (49,152 in all); first-fit packing fills
  # about 93% of source and 98% of target slots for WMT-like lengths
  # (simulated with attention_jax.data.packing), ~23k and ~24k tokens. 96 is
  # divisible by 8, 16 and 32 devices.
  config.batch_size = 96
  config.num_train_steps = 100_000
  config.max_train_seconds = 0
  config.log_every = 100
  config.eval_every = 5_000
  config.checkpoint_every = 1_000

  config.eval.beam_size = 4
  config.eval.length_penalty = 0.6
  config.eval.max_decode_len = 256
  config.eval.decode_batch_size = 64
  config.eval.bleu_sentences = 300
  config.eval.final_sentences = 0
  return config
