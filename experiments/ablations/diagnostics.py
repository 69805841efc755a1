"""Where attention mechanisms differ: recall and copying, per length.

Every causal-capable mechanism of the registry as the self-attention of a
2-layer decoder-only model (width 64) trained on multi-query associative
recall (Arora et al., 2023, Zoology, sec. 3) mixed over sequence lengths 64
and 128 and 4, 8 or 16 key-value pairs, then tested at each setting: the
report gives test answer accuracy per mechanism and plots it against length
and pair count. Run the other tasks with the base config's preset, e.g.
`--config=experiments/ablations/diagnostics.py:selective_copy`.

The gated linear / delta-rule family (retnet, gla, mamba2, deltanet,
gated_deltanet) runs with its papers' short convolution (4 taps on q, k and
v, `conv_norm_gate`), as in the MQAR results it is compared with (Zoology's
and the DeltaNet paper's models all have one); output norm and gate stay
off, so the state update is what differs within the family. Without it the
family cannot form the previous-token features recall needs: deltanet/seed=0
reached 0.145 test answer accuracy after 2,000 steps with no convolution,
and 0.944 after 600 steps with it (both at f95dc13, 2026-12-07). The other
mechanisms have no convolution option and run as they are.

One more variant, `forgetting_decay_time=4-256`, is FoX with its forget
gate's bias started from per-head decay times T of 4 to 256 tokens
(f = exp(-1/T), `decay_time_min`/`decay_time_max`) instead of the paper's
b_f = 0, which starts every gate at f = 1/2 and so halves a key's weight at
each later token. With b_f = 0, forgetting/seed=0 reached 0.137 test answer
accuracy after 2,000 steps; with the decay times, the same seed, data and
steps reached 1.000 at every setting (0.997 on validation by step 500), at
c458f7d on 2026-12-07. The variant shows how much of FoX's result on recall
is its initialisation.

A point trains 2,000 steps of 64 rows of up to 128 tokens. The first point,
additive/seed=0, took 2 h 10 min on the 2-core CPU shared with another study
(additive attention forms [B, H, T, T, d] tensors: about 0.5 s a step alone);
a 60-step check of softmax ran at about 0.3 s a step on a loaded CPU, some
10-20 minutes a point. The study's 66 points (22 variants x 3 seeds) take
many hours, and the runner resumes where it stopped.

  python launch.py --config=experiments/ablations/diagnostics.py \\
      --workdir=workdirs/ablations/diagnostics
"""

import dataclasses

from attention_jax import attention
from attention_jax.ablation import study
from experiments.configs import mqar

BASELINE = 'softmax'
REFERENCE = """\
Arora et al. (2023), "Zoology" (sec. 3-4): gated convolutions and other
efficient (sub-quadratic) language models fall short of attention on
multi-query associative recall, and the gap grows with the number of
key-value pairs relative to the model's width.
Yang et al. (2024), "Parallelizing Linear Transformers with the Delta Rule
over Sequence Length" (abstract): linear transformers and state-space models
"still underperform transformers especially on tasks that require in-context
retrieval", while the delta rule (DeltaNet) has "been found to be more
effective at associative recall". Yang et al. (2025), "Gated Delta
Networks" (abstract): gating "enables rapid memory erasure while the delta
rule facilitates targeted updates"."""

MECHANISMS = [name for name in attention.names()
              if attention.get(name).capabilities.causal]
# Taps of the short convolution for the mechanisms that have that option.
CONV_SIZE = 4


def _overrides(name: str) -> dict:
  """The config of mechanism `name`'s points (seed aside)."""
  overrides = {'model.attention': name}
  options = attention.get(name).Options
  if 'conv_size' in {field.name for field in dataclasses.fields(options)}:
    overrides[f'model.options.{name}.conv_size'] = CONV_SIZE
  return overrides


def get_config(arg=None):
  config = mqar.get_config(arg)
  config.data.vocab_size = 128
  config.data.lengths = (64, 128)
  config.data.num_items = (4, 8, 16)
  config.data.max_len = 128
  config.data.test_examples = 256
  config.num_train_steps = 2000
  config.eval_every = 500
  config.checkpoint_every = 500
  return config


VARIANTS = {name: _overrides(name) for name in MECHANISMS}
# FoX with its forget gate's bias started from per-head decay times of 4 to
# 256 tokens (f_h = exp(-1/T_h)) instead of the paper's b_f = 0 (f = 1/2).
VARIANTS['forgetting_decay_time=4-256'] = {
    'model.attention': 'forgetting',
    'model.options.forgetting.decay_time_min': 4.0,
    'model.options.forgetting.decay_time_max': 256.0,
}


def sweep() -> list[study.Point]:
  return [study.Point(variant, seed, {**overrides, 'seed': seed})
          for seed in (0, 1, 2) for variant, overrides in VARIANTS.items()]
