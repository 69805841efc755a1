"""Beam search leaves the encoder memory alone: it is the same for every beam
of a sentence, so reordering it at each step would change nothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.attention import frame
from attention_jax.decode import beam_search
from attention_jax.decode import translator
from attention_jax.model.config import TransformerConfig
from attention_jax.model.transformer import Transformer

BEAM, DECODE_LEN, EOS_ID = 3, 7, 1
# softmax keeps the memory's keys and values; linear keeps a summary of them.
MECHANISMS = ('softmax', 'linear')


def _cfg(mechanism: str) -> TransformerConfig:
  return TransformerConfig(
      vocab_size=12, emb_dim=16, num_heads=2, num_encoder_layers=1,
      num_decoder_layers=2, qkv_dim=16, mlp_dim=32, max_len=DECODE_LEN,
      attention=mechanism)


def _params_and_inputs(cfg: TransformerConfig):
  inputs = jax.random.randint(jax.random.key(0), (4, 6), 2, cfg.vocab_size)
  # A padded row: the memory's padding mask travels with it.
  inputs = inputs.at[:, -1].set(EOS_ID).at[1, 3:].set(0).at[1, 2].set(EOS_ID)
  params = Transformer(cfg).init(jax.random.key(1), inputs, inputs)['params']
  # Larger weights than the initialisation's, so that beams differ and some
  # hypotheses end early.
  params = jax.tree.map(lambda x: 3 * x, params)
  return params, inputs


def _predict_reordering_everything(params, inputs_BxS, cfg):
  """`translator.predict` with the memory in the beam-search carry, so that
  every step reorders it with the cache."""
  model = Transformer(cfg.replace(deterministic=True))
  decoder = Transformer(cfg.replace(deterministic=True, decode=True))
  encoded = model.apply({'params': params}, inputs_BxS,
                        method=Transformer.encode)
  encoded_N, segments_N = beam_search.expand_to_beams(
      (encoded, (inputs_BxS != 0).astype(jnp.int32)), BEAM)
  _, variables = decoder.apply(
      {'params': params}, encoded_N, segments_N,
      jnp.zeros((encoded_N.shape[0], DECODE_LEN), jnp.int32),
      method=Transformer.decode, mutable=['cache', frame.MEMORY])

  def tokens_to_logits(last_tokens_N, carried):
    logits, updated = decoder.apply(
        {'params': params, **carried}, encoded_N, segments_N,
        last_tokens_N[:, None], method=Transformer.decode, mutable=['cache'])
    return logits[:, 0], {**carried, **updated}

  sequences, _ = beam_search.beam_search(
      tokens_to_logits, variables, inputs_BxS.shape[0], beam_size=BEAM,
      alpha=0.6, max_decode_len=DECODE_LEN, eos_id=EOS_ID)
  return sequences[:, 0]


@pytest.mark.parametrize('mechanism', MECHANISMS)
def test_memory_is_outside_the_reordered_cache(mechanism):
  cfg = _cfg(mechanism)
  params, inputs = _params_and_inputs(cfg)
  encoded = jnp.zeros(inputs.shape + (cfg.emb_dim,))
  decoder = Transformer(cfg.replace(deterministic=True, decode=True))
  _, variables = decoder.apply(
      {'params': params}, encoded, (inputs != 0).astype(jnp.int32),
      jnp.zeros((inputs.shape[0], DECODE_LEN), jnp.int32),
      method=Transformer.decode, mutable=['cache', frame.MEMORY])
  layers = [f'decoder_{i}' for i in range(cfg.num_decoder_layers)]
  assert sorted(variables[frame.MEMORY]) == layers
  for layer in layers:
    assert set(variables[frame.MEMORY][layer]['cross_attention']) == {
        'memory'}
    assert 'cross_attention' not in variables['cache'][layer]


@pytest.mark.parametrize('mechanism', MECHANISMS)
def test_unreordered_memory_gives_the_translations_of_a_full_reorder(
    mechanism):
  cfg = _cfg(mechanism)
  params, inputs = _params_and_inputs(cfg)
  predicted = jax.jit(lambda p, x: translator.predict(
      p, x, cfg=cfg, beam_size=BEAM, alpha=0.6,
      max_decode_len=DECODE_LEN))(params, inputs)
  reference = jax.jit(_predict_reordering_everything, static_argnums=2)(
      params, inputs, cfg)
  np.testing.assert_array_equal(predicted, reference)
  # Not a vacuous comparison: rows differ, and some end before the limit.
  assert len({tuple(row) for row in np.asarray(predicted)}) > 1
  assert (np.asarray(predicted) == EOS_ID).any()
