"""Number of attention heads at a fixed width (Vaswani et al. 2017, Table 3 A).

qkv_dim stays 128, so 1 head has 128 dimensions per head and 16 heads have 8,
and the parameter count is the same for every variant, as in the paper's
rows (A).

  python launch.py --config=experiments/ablations/heads.py \\
      --workdir=workdirs/ablations/heads \\
      --reuse_from=workdirs/ablations/attention
"""

from attention_jax.ablation import study
from experiments.ablations import base

BASELINE = 'heads=4'
REFERENCE = """\
Vaswani et al. (2017), "Attention Is All You Need", Table 3 rows (A), base
model on newstest2013 English-German dev BLEU, heads at fixed computation
(d_k = d_v = 512 / h): 1 head 24.9, 4 heads 25.5, 8 heads 25.8 (base),
16 heads 25.8, 32 heads 25.4. In their words: "single-head attention is 0.9
BLEU worse than the best setting, quality also drops off with too many
heads." Their model is 65M parameters trained 100k steps on 4.5M sentence
pairs; ours is 1.4M parameters trained 800 steps on 30k Bible verses, so only
the direction of the effect is comparable, not its size."""


def get_config(arg=None):
  return base.get_config(arg)


def sweep() -> list[study.Point]:
  return study.grid({'heads': ('model.num_heads', (1, 2, 4, 8, 16))},
                    seeds=(0, 1, 2))
