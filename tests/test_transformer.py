"""Properties of the Transformer as a whole: causality through its layers,
packing. Cached decoding of every mechanism is in test_attention_contract.py."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.model.config import TransformerConfig
from attention_jax.model.transformer import DecoderLayer
from attention_jax.model.transformer import shift_right
from attention_jax.model.transformer import Transformer

CFG = TransformerConfig(
    vocab_size=40, emb_dim=32, num_heads=4, num_encoder_layers=2,
    num_decoder_layers=2, qkv_dim=32, mlp_dim=64, max_len=16,
    deterministic=True,
)


class DecoderStack(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, y, encoded, target_segments, source_segments):
    target_positions = jnp.arange(y.shape[1])[None]
    source_positions = jnp.arange(encoded.shape[1])[None]
    for i in range(self.cfg.num_decoder_layers):
      y = DecoderLayer(self.cfg, name=f'layer_{i}')(
          y, encoded, target_segments, source_segments, target_positions,
          source_positions,
      )
    return y


@pytest.mark.parametrize('pre_layer_norm', [True, False])
def test_decoder_is_causal(pre_layer_norm):
  cfg = CFG.replace(pre_layer_norm=pre_layer_norm)
  keys = jax.random.split(jax.random.key(0), 3)
  y = jax.random.normal(keys[0], (1, 6, 32))
  encoded = jax.random.normal(keys[1], (1, 4, 32))
  tgt_seg, src_seg = jnp.ones((1, 6), jnp.int32), jnp.ones((1, 4), jnp.int32)
  stack = DecoderStack(cfg)
  params = stack.init(keys[2], y, encoded, tgt_seg, src_seg)
  for i in range(6):
    grad = jax.grad(
        lambda y: stack.apply(params, y, encoded, tgt_seg, src_seg)[0, i].sum()
    )(y)
    per_position = np.abs(np.asarray(grad[0])).sum(-1)
    assert np.all(per_position[i + 1 :] == 0), (i, per_position)
    assert np.all(per_position[: i + 1] > 0), (i, per_position)


def test_shift_right_starts_each_packed_segment_with_bos():
  targets = jnp.array([[5, 6, 1, 7, 1, 0]])
  segments = jnp.array([[1, 1, 1, 2, 2, 0]])
  np.testing.assert_array_equal(
      shift_right(targets, segments), [[0, 5, 6, 0, 7, 0]]
  )


def test_packed_pairs_do_not_see_each_other():
  model = Transformer(CFG)
  inputs = jnp.array([[3, 4, 1, 8, 9, 1, 0, 0]])
  in_seg = jnp.array([[1, 1, 1, 2, 2, 2, 0, 0]])
  in_pos = jnp.array([[0, 1, 2, 0, 1, 2, 0, 0]])
  targets = jnp.array([[5, 1, 6, 7, 1, 0]])
  tgt_seg = jnp.array([[1, 1, 2, 2, 2, 0]])
  tgt_pos = jnp.array([[0, 1, 0, 1, 2, 0]])
  params = model.init(jax.random.key(0), inputs, targets)
  forward = lambda i, t: model.apply(  # noqa: E731
      params, i, t, in_seg, tgt_seg, in_pos, tgt_pos
  )
  logits = forward(inputs, targets)
  # Changing the second pair must leave the first pair's logits alone.
  other = forward(inputs.at[0, 3:5].set(jnp.array([11, 12])),
                  targets.at[0, 2:4].set(jnp.array([13, 14])))
  np.testing.assert_allclose(logits[0, :2], other[0, :2], atol=1e-5)
  assert not np.allclose(logits[0, 2:5], other[0, 2:5])
  # The first pair alone, unpacked, gives the same logits.
  alone = model.apply(params, inputs[:, :3], targets[:, :2])
  np.testing.assert_allclose(logits[0, :2], alone[0], atol=1e-5)

