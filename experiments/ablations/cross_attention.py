"""What attention buys: the baseline against a decoder without cross-attention.

`mean_pooling` replaces only cross-attention: every target position gets the
mean of the encoder's outputs over the source sentence (a fixed-size summary,
as the non-attentional encoder-decoders had), so the decoder still knows the
source but cannot look at particular words of it. Self-attention stays
softmax attention in both.

  python launch.py --config=experiments/ablations/cross_attention.py \\
      --workdir=workdirs/ablations/cross_attention \\
      --reuse_from=workdirs/ablations/attention
"""

from attention_jax.ablation import study
from experiments.ablations import base

BASELINE = 'cross_attention=softmax'
REFERENCE = """\
Luong, Pham and Manning (2015), "Effective Approaches to Attention-based
Neural Machine Translation", Table 1 (WMT'14 English-German, newstest2014):
the non-attentional stacked LSTM (reversed source, dropout) scores 14.0 BLEU;
with global attention 16.8 (+2.8), with input feeding 18.1, and with local
attention (predictive alignment) and input feeding 19.0: in the abstract's
words, "a significant gain of 5.0 BLEU points over non-attentional systems".
Their models are 4-layer LSTMs of 1000 cells trained for 10-12 epochs on
4.5M sentence pairs; ours is a 1.4M-parameter Transformer trained 800 steps
on 30k Bible verses."""


def get_config(arg=None):
  return base.get_config(arg)


def sweep() -> list[study.Point]:
  # The baseline is the base config unchanged, so `--reuse_from` can take
  # its points from the attention study, where they are the same runs.
  return [
      point
      for seed in (0, 1, 2)
      for point in (
          study.Point('cross_attention=softmax', seed, {'seed': seed}),
          study.Point('cross_attention=mean_pooling', seed,
                      {'model.cross_attention': 'mean_pooling', 'seed': seed}),
      )
  ]
