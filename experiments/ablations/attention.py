"""Every attention mechanism a decoder can use, against softmax attention.

Each variant replaces attention everywhere it can: encoder self-attention,
causal decoder self-attention and cross-attention (local attention keeps full
cross-attention, where a window has no meaning). `chunked` computes exact
softmax attention in blocks, so it is a control: it should not differ from
the baseline beyond numerical noise.

  python launch.py --config=experiments/ablations/attention.py \\
      --workdir=workdirs/ablations/attention
"""

from attention_jax.ablation import study
from experiments.ablations import base

VARIANTS = ('softmax', 'additive', 'bilinear', 'unscaled_dot_product',
            'cosine', 'local', 'chunked', 'linear', 'performer')
BASELINE = 'attention=softmax'


def get_config(arg=None):
  return base.get_config(arg)


def sweep() -> list[study.Point]:
  return study.grid({'attention': ('model.attention', VARIANTS)},
                    seeds=(0, 1, 2))
