"""Spanish -> English on the Bible corpus, sized for a 2-core CPU hour.

Presets, chosen after a colon (config_flags passes the text to get_config):
  default: 3+3 layers of width 256, an hour of training on a 2-core CPU.
    python launch.py --config=experiments/configs/bible.py --workdir=workdirs/bible
  small: 2+2 layers of width 128, 20 minutes of training.
    python launch.py --config=experiments/configs/bible.py:small --workdir=workdirs/bible_small
  smoke: 1+1 layers of width 64, 300 steps; the whole pipeline in under 3
    minutes (experiments/configs/smoke.py is the same config).
    python launch.py --config=experiments/configs/bible.py:smoke --workdir=workdirs/smoke
Override any field of any preset, e.g. `--config.model.num_heads=8`.
"""

import ml_collections

from attention_jax import attention
from attention_jax.attention import positions


def get_config(arg=None) -> ml_collections.ConfigDict:
  """The experiment at the preset `arg` (None or '' is the default).

  Raises:
    ValueError: `arg` is no preset, naming the valid ones.
  """
  preset = arg or 'default'
  if preset not in PRESETS:
    raise ValueError(
        f'Unknown preset {preset!r} of experiments/configs/bible.py; valid '
        f'presets are: {", ".join(PRESETS)} (e.g. '
        '--config=experiments/configs/bible.py:small).'
    )
  config = _default()
  PRESETS[preset](config)
  return config


def _default() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # What is trained: 'translation' here; experiments/configs/mqar.py has the
  # decoder-only diagnostic tasks.
  config.task = 'translation'

  config.data = ml_collections.ConfigDict()
  # A TFDS name from attention_jax.data.corpora.
  config.data.dataset = 'bible_es_en'
  config.data.source = 'es'
  config.data.target = 'en'
  # Where TFDS prepares datasets; the shared vocabulary is stored here too.
  config.data.data_dir = '~/tensorflow_datasets'
  config.data.vocab_size = 8000
  # Length of a packed row, and the longest sentence (in pieces) trained on.
  config.data.max_len = 128

  config.model = ml_collections.ConfigDict()
  # A name from attention_jax.attention.names().
  config.model.attention = 'softmax'
  # Per-place overrides of `attention`; '' keeps `attention` there. A
  # comma-separated list gives one mechanism per layer of the stack (a
  # hybrid: 'linear,linear,softmax' for three decoder layers).
  config.model.encoder_self_attention = ''
  config.model.decoder_self_attention = ''
  config.model.cross_attention = ''
  # Each mechanism's own options, under its name, e.g.
  # --config.model.options.local.window_size=32 (defaults and meaning in
  # that mechanism's file under attention_jax/attention/).
  config.model.options = ml_collections.ConfigDict(
      attention.MECHANISMS.default_options())
  # Key/value heads for grouped-query attention; 0 means num_heads, 1 is
  # multi-query attention.
  config.model.num_kv_heads = 0
  # A name from attention_jax.attention.positions.SCHEMES, and the schemes'
  # options, e.g. --config.model.position_options.relative_bias.num_buckets.
  config.model.position_scheme = 'sinusoidal'
  config.model.position_options = ml_collections.ConfigDict(
      positions.SCHEMES.default_options())
  # Fused kernel of mechanisms that have one: 'auto', 'xla', 'cudnn', 'pallas'.
  config.model.implementation = 'auto'
  # Per-head normalisation of queries and keys: 'none', 'rms' (learned
  # scale per channel) or 'l2' (logits g * cos(q, k), g learned per head
  # from qk_norm_gain; Henry et al., 2020).
  config.model.qk_norm = 'none'
  config.model.qk_norm_gain = 12.0
  # A sink logit per head in the softmax denominator: 'none', 'learned' or
  # 'zero' (softmax-off-by-one); for mechanisms with a softmax.
  config.model.attention_sink = 'none'
  config.model.emb_dim = 256
  config.model.num_heads = 4
  config.model.num_encoder_layers = 3
  config.model.num_decoder_layers = 3
  # Width of queries, keys and values summed over heads.
  config.model.qkv_dim = 256
  config.model.mlp_dim = 1024
  config.model.dropout_rate = 0.1
  config.model.attention_dropout_rate = 0.1
  # True: pre-LayerNorm residual blocks; False: post-LN (Vaswani et al.).
  config.model.pre_layer_norm = True
  # Activation and matmul dtype: 'float32' or 'bfloat16'.
  config.model.dtype = 'float32'

  config.optimizer = ml_collections.ConfigDict()
  # Peak learning rate, reached at the end of warm-up.
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 800
  config.optimizer.beta1 = 0.9
  config.optimizer.beta2 = 0.98
  config.optimizer.eps = 1e-9
  config.optimizer.weight_decay = 0.0
  config.optimizer.grad_clip_norm = 1.0
  config.label_smoothing = 0.1

  # Packed rows of data.max_len tokens per global batch, over all devices.
  config.batch_size = 16
  # Gradient accumulation: the batch is processed in this many slices, so a
  # batch too large for device memory still gives the same update.
  config.micro_batches = 1

  # Devices of all processes form a (data, fsdp) mesh; -1 is "the rest".
  # Batch rows are split over both axes; parameters and optimizer state are
  # split over `fsdp` only, by the rules below.
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1
  # Logical parameter axis (attention_jax/partitioning.py) -> mesh
  # axis; '' keeps that axis whole on every device.
  config.mesh.rules = ml_collections.ConfigDict({
      'vocab': '',
      'embed': 'fsdp',
      'mlp': '',
      'heads': '',
      'head_dim': '',
      'table': '',
  })
  # Whichever comes first ends training: this many steps, or this much
  # training time in seconds (0: no time limit). The default is the hour of
  # the 2-core CPU quality bar, which covered about 3,600 steps there (the
  # README's table); on a slower or shared CPU the hour ends sooner.
  config.num_train_steps = 6_000
  config.max_train_seconds = 3600
  config.log_every = 100
  config.eval_every = 1000
  config.checkpoint_every = 1000
  config.keep_checkpoints = 3
  # Steps traced by jax.profiler into workdir/profile/process_<i>/ for
  # TensorBoard's profile plugin, from the second step this process runs
  # (the first warms up); 0: no trace.
  config.profile_steps = 0

  config.eval = ml_collections.ConfigDict()
  config.eval.beam_size = 4
  # Alpha of the ((5 + len) / 6) ** alpha length penalty.
  config.eval.length_penalty = 0.6
  config.eval.max_decode_len = 128
  config.eval.decode_batch_size = 64
  # Validation sentences translated at each periodic eval; 0: all of them.
  config.eval.bleu_sentences = 300
  # False: validation is scored by loss only (periodically and at the end),
  # and only the test split is translated, as in ablation studies.
  config.eval.valid_bleu = True
  # Sentences of each split translated at the end; 0: all of them.
  config.eval.final_sentences = 0
  # The final evaluation uses the mean parameters of the last this many
  # saved checkpoints (Vaswani et al. average 5); 0: the last one alone.
  # Needs keep_checkpoints at least as large.
  config.eval.average_checkpoints = 0
  return config


def _small(config: ml_collections.ConfigDict) -> None:
  config.model.emb_dim = 128
  config.model.num_encoder_layers = 2
  config.model.num_decoder_layers = 2
  config.model.qkv_dim = 128
  config.model.mlp_dim = 512
  config.optimizer.warmup_steps = 400
  config.num_train_steps = 3_000
  config.max_train_seconds = 1200
  config.eval_every = 500
  config.checkpoint_every = 500


def _smoke(config: ml_collections.ConfigDict) -> None:
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


# Preset name -> what it changes in the default config.
PRESETS = {'default': lambda config: None, 'small': _small, 'smoke': _smoke}
