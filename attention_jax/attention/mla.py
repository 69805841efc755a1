"""Multi-head latent attention (DeepSeek-AI, 2024, "DeepSeek-V2: A Strong,
Economical, and Efficient Mixture-of-Experts Language Model", §2.1).

The keys and values of all heads are up-projected from one compressed
latent per token, so that decoding caches only the latent and one small
rotary key shared by the heads:

  c_j = RMSNorm(x_j W_DKV)                       the latent, d_c channels
  k_j,h = [c_j W_UK,h ; RoPE(x_j W_KR)]          D + d_R, rotary part shared
  v_j,h = c_j W_UV,h                             D
  q_i,h = [x_i W_Q,h ; RoPE(x_i W_QR,h)]         D + d_R
  o_i,h = Σ_j softmax_j(q_i,h · k_j,h / √(D + d_R)) v_j,h

RoPE is decoupled: rotating c_j W_UK,h would make the key up-projection
depend on the position and forbid absorbing it into the query, so only the
d_R extra channels rotate. In decoding the absorption is what runs:
q_i,h W_UK,hᵀ meets the cached latents directly, and the latents' weighted
sum is up-projected once, W_UV,h after the softmax. Queries are projected
from x without DeepSeek-V2's low-rank query compression (W_DQ, W_UQ), which
saves training activations and leaves the cache unchanged. The projections
have no biases and the latent's RMSNorm a learned scale, as in DeepSeek-V2.
The frame makes no query, key or value projections for MLA; its output
projection maps the heads' D channels back to the model width, and
`num_kv_heads` does not apply (every head has its own W_UK,h and W_UV,h).

Cache per token and layer: d_c + d_R values instead of 2·H·D (2·G·D with
grouped key/value heads). With the defaults at width 512, 8 heads of 64:
256 + 32 = 288 against softmax's 2·8·64 = 1024, 3.6 times smaller.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import partitioning as part
from attention_jax.attention import base
from attention_jax.attention import registry
from attention_jax.attention import softmax

# DeepSeek-V2's epsilon of the latent's RMSNorm.
_NORM_EPSILON = 1e-6


@dataclasses.dataclass(frozen=True)
class MlaOptions:
  """DeepSeek-V2 uses d_c = 4·D and d_R = D/2 (512 and 64 for heads of 128);
  the defaults keep those ratios for this codebase's heads of 64."""

  # Size d_c of the latent c_j that decoding caches per token.
  kv_lora_rank: int = 256
  # Size d_R of the decoupled rotary part of queries and keys (even).
  rope_head_dim: int = 32

  def __post_init__(self):
    if self.kv_lora_rank < 1:
      raise ValueError(
          f'kv_lora_rank={self.kv_lora_rank} must be at least 1.')
    if self.rope_head_dim < 2 or self.rope_head_dim % 2:
      raise ValueError(
          f'rope_head_dim={self.rope_head_dim} must be even and at least 2: '
          'rotary embeddings rotate channel pairs.')


def _kernel(module, name: str, shape, names):
  """A bias-free projection's kernel, Glorot-uniform over its input axis and
  all output axes (as `nn.DenseGeneral` initialises it)."""
  init = jax.nn.initializers.variance_scaling(
      1.0, 'fan_avg', 'uniform', in_axis=0,
      out_axis=tuple(range(1, len(shape))))
  return module.param(name, part.init(init, *names), shape, jnp.float32)


@registry.register('mla')
class MultiHeadLatent(base.Mechanism):
  """Keys and values up-projected from a cached per-token latent.

  Parameters (none of the frame's but 'out'): 'query' [E, H, D + d_R],
  'kv_down' [E, d_c], 'kv_norm' [d_c], 'key_up' and 'value_up'
  [d_c, H, D], 'key_rope' [E, d_R].
  """

  Options = MlaOptions
  TEST_OPTIONS = {'kv_lora_rank': 6, 'rope_head_dim': 4}
  # Scores as softmax attention's, with these differences.
  capabilities = dataclasses.replace(
      softmax.FAMILY_CAPABILITIES, projections=())

  def key_extras(self, module, inputs_kv_BxKxE, kv_positions_BxK, rotate,
                 num_heads):
    """The latent c [B, K, d_c] and the rotated shared key [B, K, d_R]."""
    del num_heads  # The latent and the rotary key are shared by the heads.
    width = inputs_kv_BxKxE.shape[-1]
    rank, rope_dim = self.options.kv_lora_rank, self.options.rope_head_dim
    dtype = inputs_kv_BxKxE.dtype
    down_ExC = _kernel(module, 'kv_down', (width, rank), (part.EMBED, None))
    latent = (inputs_kv_BxKxE @ down_ExC.astype(dtype)).astype(jnp.float32)
    latent = latent * jax.lax.rsqrt(
        jnp.mean(latent * latent, -1, keepdims=True) + _NORM_EPSILON)
    scale_C = module.param('kv_norm', part.init(jax.nn.initializers.ones,
                                                None), (rank,), jnp.float32)
    rope_ExR = _kernel(module, 'key_rope', (width, rope_dim),
                       (part.EMBED, None))
    key_rope_BxKx1xR = (inputs_kv_BxKxE @ rope_ExR.astype(dtype))[:, :, None]
    return {
        'latent': (latent * scale_C[None, None]).astype(dtype),
        'key_rope': rotate(key_rope_BxKx1xR, kv_positions_BxK)[:, :, 0],
    }

  def attend(self, module, inputs):
    num_heads, head_dim = inputs.num_heads, inputs.head_dim
    rank, rope_dim = self.options.kv_lora_rank, self.options.rope_head_dim
    x_BxQxE = inputs.inputs_q_BxQxE
    dtype = x_BxQxE.dtype
    query_ExHxF = _kernel(
        module, 'query', (x_BxQxE.shape[-1], num_heads, head_dim + rope_dim),
        (part.EMBED, part.HEADS, part.HEAD_DIM))
    key_up_CxHxD, value_up_CxHxD = (
        _kernel(module, name, (rank, num_heads, head_dim),
                (None, part.HEADS, part.HEAD_DIM)).astype(dtype)
        for name in ('key_up', 'value_up'))
    query_BxQxHxF = jnp.einsum('bqe,ehf->bqhf', x_BxQxE,
                               query_ExHxF.astype(dtype))
    query_BxQxHxD = query_BxQxHxF[..., :head_dim]
    query_rope_BxQxHxR = inputs.rotate(query_BxQxHxF[..., head_dim:],
                                       inputs.mask.q_positions_BxQ)
    latent_BxKxC = inputs.key_extras['latent']
    logits_BxHxQxK = jnp.einsum('bqhr,bkr->bhqk', query_rope_BxQxHxR,
                                inputs.key_extras['key_rope'])
    # In decoding one query meets the whole cache, so the up-projections
    # are absorbed into the query and the output rather than applied to
    # every cached latent: the softmax sums latents (V = d_c). With as many
    # queries as keys, up-projecting keys and values (V = D) is cheaper, as
    # D < d_c.
    if inputs.decoding:
      query_latent_BxQxHxC = jnp.einsum('bqhd,chd->bqhc', query_BxQxHxD,
                                        key_up_CxHxD)
      logits_BxHxQxK += jnp.einsum('bqhc,bkc->bhqk', query_latent_BxQxHxC,
                                   latent_BxKxC)
      values_BxKxHxV = jnp.broadcast_to(
          latent_BxKxC[:, :, None],
          latent_BxKxC.shape[:2] + (num_heads, rank))
    else:
      key_BxKxHxD = jnp.einsum('bkc,chd->bkhd', latent_BxKxC, key_up_CxHxD)
      logits_BxHxQxK += jnp.einsum('bqhd,bkhd->bhqk', query_BxQxHxD,
                                   key_BxKxHxD)
      values_BxKxHxV = jnp.einsum('bkc,chd->bkhd', latent_BxKxC,
                                  value_up_CxHxD)
    logits_BxHxQxK = logits_BxHxQxK.astype(jnp.float32) / np.sqrt(
        head_dim + rope_dim)
    if inputs.bias_BxHxQxK is not None:
      logits_BxHxQxK += inputs.bias_BxHxQxK
    out = softmax.softmax_weighted_sum(
        logits_BxHxQxK, values_BxKxHxV, inputs.mask.dense(), inputs.dropout,
        inputs.sink_logit_H, inputs.capture_weights)
    if inputs.decoding:
      out = jnp.einsum('bqhc,chd->bqhd', out, value_up_CxHxD)
    return out

  def reference(self, params, inputs, path=()):
    del path
    logits, value = self._reference_logits(params, inputs)
    return softmax.reference_softmax_attention(
        logits, value, base.reference_mask(inputs), inputs.sink_logit_H)

  def reference_weights(self, params, inputs, path=()):
    del path
    logits, _ = self._reference_logits(params, inputs)
    return softmax.reference_softmax_weights(
        logits, base.reference_mask(inputs), inputs.sink_logit_H)

  def _reference_logits(self, params, inputs):
    """Biased logits [B, H, Q, K] and values [B, K, H, D], float32."""
    x_q = inputs.inputs_q_BxQxE.astype(jnp.float32)
    x_kv = inputs.inputs_kv_BxKxE.astype(jnp.float32)
    head_dim = params['key_up'].shape[-1]
    mask = inputs.mask
    # c_j = RMSNorm(x_j W_DKV), with its learned scale.
    compressed = x_kv @ params['kv_down']
    rms = jnp.sqrt(jnp.mean(compressed ** 2, -1, keepdims=True)
                   + _NORM_EPSILON)
    latent = compressed / rms * params['kv_norm'][None, None]
    key_content = jnp.einsum('bkc,chd->bkhd', latent, params['key_up'])
    value = jnp.einsum('bkc,chd->bkhd', latent, params['value_up'])
    key_rope = inputs.rotate((x_kv @ params['key_rope'])[:, :, None],
                             mask.kv_positions_BxK)
    num_heads = key_content.shape[2]
    key = jnp.concatenate(
        [key_content,
         jnp.repeat(key_rope, num_heads, axis=2)], -1)
    query = jnp.einsum('bqe,ehf->bqhf', x_q, params['query'])
    query = jnp.concatenate(
        [query[..., :head_dim],
         inputs.rotate(query[..., head_dim:], mask.q_positions_BxQ)], -1)
    logits = jnp.einsum('bqhf,bkhf->bhqk', query, key) / np.sqrt(
        query.shape[-1])
    if inputs.bias_BxHxQxK is not None:
      logits = logits + inputs.bias_BxHxQxK
    return logits, value
