"""Attention over whole chapters: exact, windowed, linear, gated, hybrid.

Chapter-level translation (experiments/configs/bible_chapters.py: rows of
1024, 2048 or 4096 pieces, windows of whole verses) with five mechanisms:

- `softmax`: exact softmax attention, computed in blocks (`chunked`), in
  O(L) memory; the baseline;
- `local`: self-attention over a window of 128 pieces (cross-attention
  stays exact, in blocks: a window over the source has no meaning);
- `linear`: kernelised linear attention everywhere (Katharopoulos et al.);
- `gated_deltanet`: the gated delta rule everywhere, a constant-size state
  in decoding (Yang et al. 2025);
- `hybrid`: in each self-attention stack a Gated DeltaNet layer under an
  exact softmax one (1:1 at this depth of 2+2 layers; cross-attention
  exact).

Points are compared at equal training time, not equal steps (a faster
mechanism sees more chapters): give the runner the budget in seconds, and
run the study alone on the machine. Equal time is equal opportunity only
when every point has the same CPU: a point that shares it with other work
trains fewer steps (a 180 s smoke of `hybrid` at 1024 beside two niced
studies ran 26 steps, about 7 s each). Alone on one pinned core, exact
attention at 1024 takes about 8 s a step, so 1,800 s is about 220 steps;
the config's warm-up is 50 steps for that reason. The
report gives test BLEU of whole chapters, training and decoding tokens/s and
peak memory per variant; each point's results.json adds the verse-level
BLEU and chrF against the sentence-level references and the chapters whose
translation lost or gained verse separators (`test_verse_bleu`,
`test_chapters_misaligned`; TensorBoard's HPARAMS tab shows them per point).
The row length is the preset after the colon (1024 by default):

  python launch.py --config=experiments/ablations/long_context.py:2048 \\
      --workdir=workdirs/ablations/long_context_2048 --equal_time=1800
"""

from attention_jax.ablation import study
from experiments.configs import bible_chapters

BASELINE = 'softmax'

VARIANTS = {
    'softmax': {},
    'local': {'model.attention': 'local', 'model.cross_attention': 'chunked'},
    'linear': {'model.attention': 'linear'},
    'gated_deltanet': {'model.attention': 'gated_deltanet'},
    'hybrid': {
        'model.encoder_self_attention': 'gated_deltanet,chunked',
        'model.decoder_self_attention': 'gated_deltanet,chunked'},
}


def get_config(arg=None):
  return bible_chapters.get_config(arg)


def sweep() -> list[study.Point]:
  return [study.Point(variant, seed, {**overrides, 'seed': seed})
          for seed in (0, 1, 2) for variant, overrides in VARIANTS.items()]
