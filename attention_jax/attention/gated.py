"""Gated attention (Qiu et al., 2025, "Gated Attention for Large Language
Models: Non-linearity, Sparsity, and Attention-Sink-Free").

Softmax attention whose output is multiplied by a sigmoid gate computed from
the layer's query-side input x, before the output projection (their G1
position): Y' = Y ⊙ sigmoid(x W_g + b_g). The gate is elementwise, one value
per head and channel (W_g: E x H*D), or headwise, one value per head
(W_g: E x H). It adds non-linearity between the value and output
projections and lets a head output nearly nothing, which the paper finds
removes attention sinks and stabilises training.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import partitioning as part
from attention_jax.attention import registry
from attention_jax.attention import softmax


@dataclasses.dataclass(frozen=True)
class GatedOptions:
  # One gate per head instead of one per head and channel.
  headwise: bool = False


@registry.register('gated')
class Gated(softmax.Softmax):
  """softmax(q k^T / sqrt(d)) v ⊙ sigmoid(x W_g + b_g), per head.

  Parameters: the frame's, plus 'gate' (kernel [E, H, D] or [E, H], bias
  [H, D] or [H]).
  """

  Options = GatedOptions

  def _gate(self, module, inputs_q_BxQxE, num_heads: int, head_dim: int):
    shape = (num_heads,) if self.options.headwise else (num_heads, head_dim)
    names = (part.HEADS,) if self.options.headwise else (part.HEADS,
                                                         part.HEAD_DIM)
    logits = nn.DenseGeneral(
        features=shape,
        dtype=inputs_q_BxQxE.dtype,
        kernel_init=part.init(nn.initializers.xavier_uniform(), part.EMBED,
                              *names),
        bias_init=part.init(nn.initializers.zeros, *names),
        name='gate',
        parent=module,
    )(inputs_q_BxQxE)
    gate = jax.nn.sigmoid(logits.astype(jnp.float32))
    return gate[..., None] if self.options.headwise else gate

  def attend(self, module, inputs):
    out_BxQxHxD = super().attend(module, inputs)
    gate = self._gate(module, inputs.inputs_q_BxQxE, *out_BxQxHxD.shape[2:])
    return (out_BxQxHxD * gate).astype(out_BxQxHxD.dtype)

  def reference(self, params, inputs, path=()):
    out = super().reference(params, inputs, path)
    kernel, bias = params['gate']['kernel'], params['gate']['bias']
    x = inputs.inputs_q_BxQxE.astype(jnp.float32)
    logits = jnp.tensordot(x, kernel, axes=1) + bias[None, None]
    gate = 1.0 / (1.0 + jnp.exp(-logits))
    if self.options.headwise:
      gate = gate[..., None]
    return out * gate
