"""A property shared by every attention configuration's tests."""

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax.attention import frame
from attention_jax.model.config import TransformerConfig
from attention_jax.model.transformer import shift_right
from attention_jax.model.transformer import Transformer


def assert_cached_decoding_equals_full_forward(cfg: TransformerConfig):
  """Step-by-step decoding with the cache gives the teacher-forced logits.

  The source has a padded row, so cross-attention's padding mask counts too.
  """
  model, decoder = Transformer(cfg), Transformer(cfg.replace(decode=True))
  inputs = jax.random.randint(jax.random.key(1), (2, 7), 1, cfg.vocab_size)
  inputs = inputs.at[1, 4:].set(0)
  targets = jax.random.randint(jax.random.key(2), (2, 6), 1, cfg.vocab_size)
  params = model.init(jax.random.key(3), inputs, targets)['params']
  full = model.apply({'params': params}, inputs, targets)

  encoded = model.apply({'params': params}, inputs, method=Transformer.encode)
  segments = (inputs != 0).astype(jnp.int32)
  _, variables = decoder.apply(
      {'params': params}, encoded, segments, jnp.zeros_like(targets),
      method=Transformer.decode, mutable=['cache', frame.MEMORY],
  )
  step_inputs, steps = shift_right(targets), []
  for t in range(targets.shape[1]):
    logits, updated = decoder.apply(
        {'params': params, **variables}, encoded, segments,
        step_inputs[:, t : t + 1], method=Transformer.decode,
        mutable=['cache'],
    )
    variables = {**variables, **updated}
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=1e-5)
