"""Retention (Sun et al., 2023, "Retentive Network: A Successor to
Transformer for Large Language Models").

Each head h keeps S_t = gamma_h S_{t-1} + k_t^T v_t and outputs
o_t = q_t S_t, with a fixed decay per head gamma_h = 1 - 2^(-5-h) for
h = 0..H-1 (the paper's multi-scale retention) and the query scaled by
d^(-1/2) (the paper scales the key; the product is the same). Unrolled,
o_i = sum_{j<=i} gamma^(i-j) (q_i . k_j) v_j.

The encoder's bidirectional form weighs key j by gamma^|i-j| and
cross-attention reads gamma^(last-j) + gamma^(j-first) of each memory key
(`decay_scan` defines both). The paper's per-head group norm and swish
output gate are options (`output_norm`, here an RMSNorm: the group norm
without its mean; `output_gate='swish'`: o ⊙ swish(x W_g)), with the short
convolution of later linear layers (`conv_size`; see `conv_norm_gate`); all
off by default.

The paper's xPos rotation: in retention, q_n e^(in theta) and k_m
e^(-im theta) make the score depend on n - m, with gamma^(n-m) as xPos's
decay; that rotation is RoPE's, so with `--config.model.position_scheme=rope`
the frame rotates queries and keys (by position within the sentence, in
training and decoding) and retention is the paper's. Other schemes act on
the embeddings.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np

from attention_jax.attention import decaying_state
from attention_jax.attention import registry


def _log_gamma(num_heads: int):
  """log(1 - 2^(-5-h)) per head, [H] float32 (exact in float64 first)."""
  return jnp.asarray(np.log1p(-2.0 ** (-5.0 - np.arange(num_heads))),
                     jnp.float32)


@registry.register('retnet')
class Retention(decaying_state.DecayingState):
  """Retention with decays gamma_h = 1 - 2^(-5-h); no parameters of its own
  beyond those of its options (`conv_norm_gate`).

  `key_extras['log_decay']` is log gamma_h at every key, [B, K, H].
  """

  capabilities = dataclasses.replace(decaying_state.DecayingState.capabilities,
                                     position_schemes=frozenset({'rope'}))

  def key_extras(self, module, inputs_kv_BxKxE, kv_positions_BxK, rotate,
                 num_heads):
    del module, kv_positions_BxK, rotate
    return {'log_decay': jnp.broadcast_to(
        _log_gamma(num_heads), inputs_kv_BxKxE.shape[:2] + (num_heads,))}

  def reference_extras(self, params, inputs_kv_BxKxE, num_heads):
    del params
    gamma_H = 1.0 - 2.0 ** (-5.0 - jnp.arange(num_heads, dtype=jnp.float32))
    return {'log_decay': jnp.broadcast_to(
        jnp.log(gamma_H), inputs_kv_BxKxE.shape[:2] + (num_heads,))}

  def queries(self, query_BxQxHxD):
    return query_BxQxHxD.astype(jnp.float32) / np.sqrt(
        query_BxQxHxD.shape[-1])
