"""The attention contract: what a mechanism supplies and what it may assume.

A mechanism is one class, registered by name (`registry.register`), that
supplies only its own part of multi-head attention; the shared frame
(`frame.MultiHeadAttention`) owns everything every mechanism repeats: the
input and output projections, grouped key/value heads, rotary positions,
score biases of position schemes, dropout, the decoding cache and its step
counter, and whether the call is self- or cross-attention.

Array names carry their shapes: B batch rows, Q queries, K keys, H query
heads, G key/value heads (G divides H; `repeat_kv_heads` expands them), D the
head size, E the model width. Dtypes: queries, keys and values arrive in the
model's compute dtype (float32 or bfloat16); segment ids and positions are
int32.

Segment ids mark packing and padding: 0 is padding, and equal non-zero ids
mark tokens of one packed sentence. A query may see a key only when both
belong to the same non-zero segment (and, causally, when the key does not
follow the query). Positions count from 0 inside each packed sentence; in
decoding, a token's position is its decoding step. `AttentionInputs.mask`
holds all of this in per-token form (`masks.TokenMask`), never as a Q x K
array unless a mechanism asks for one (`mask.dense()`).

What a mechanism can do is data (`Capabilities`), declared once on its class
and read by config validation, the frame and the test suite alike. A
mechanism's hyper-parameters are a frozen dataclass (`Options`) registered
with it; they are set from the config under the mechanism's name
(`config.model.options.<name>.<field>`), validated in `__post_init__`, and
are model fields for resumption unless listed in `RESUMABLE_FIELDS` (fields
that only change how the same function is computed, such as a block size).

Every mechanism also registers a `reference`: a plain implementation written
from its paper's equations, with explicit quadratic masks, against which the
contract tests (tests/test_attention_contract.py) compare `attend` (followed
by `finish`) in outputs and gradients.

After `attend`, a decoding `step` or a cross-attention `read`, the frame
passes the per-head output through the mechanism's `finish`, with the
query-side inputs, before its output projection: the one place where a
mechanism acts on its output in every place and in decoding alike (an
output gate or norm; the identity by default).
"""

import dataclasses
import enum
from typing import Any, Callable, ClassVar, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax.attention import masks


class DecodingState(enum.Enum):
  """What a mechanism keeps between decoding steps.

  KV_CACHE: the frame caches every step's keys and values (and the projected
    encoder memory) and calls `attend` with one query against them.
  RECURRENT: the mechanism keeps a constant-size state of its own
    (`initial_state`, `step`, `summarise`, `read`); the frame stores it.
  NONE: the mechanism cannot decode causally; as cross-attention it
    summarises the memory once (`summarise`, `read`).
  """

  KV_CACHE = 'kv_cache'
  RECURRENT = 'recurrent'
  NONE = 'none'


@dataclasses.dataclass(frozen=True)
class Capabilities:
  """What a mechanism can do; read by config checks, the frame and tests.

  Attributes:
    causal: usable as decoder self-attention (each query sees only keys at or
      before it, with incremental decoding).
    bidirectional: usable as non-causal self-attention (the encoder).
    cross_attention: usable as cross-attention (queries from the decoder,
      keys and values from the encoder memory).
    decoding_state: what it keeps between decoding steps.
    score_bias: takes an additive float32 bias on its query-key scores, so
      the score-bias position schemes (ALiBi, T5 relative) apply.
    position_schemes: the position schemes acting inside attention that it
      honours ('rope' rotates its queries and keys; score-bias schemes need
      `score_bias` too). Schemes added to the embeddings need nothing.
    fused_kernels: fused kernels that compute exactly this mechanism
      (see `fused.py`); the frame dispatches to them by
      `config.model.implementation`.
    attention_weights: forms explicit attention weights (normalised or not,
      as sigmoid attention's), so attention dropout applies to them.
    inspectable_weights: hands its whole weight matrix to
      `AttentionInputs.capture_weights` when that is set, so that the frame
      sows it for inspection (see `reference_weights`); needs
      `attention_weights`. False where the matrix never exists (the
      kernelised and recurrent forms), which then have no attention maps.
    projections: the per-head input projections the frame creates for it
      ('query', 'key', 'value'); the output projection 'out' is always there.
    qk_norm: takes the model's `qk_norm` on its projected queries and keys
      (needs 'query' and 'key' projections); False where the mechanism
      normalises them itself (cosine, the delta rule), which would undo it.
    sink: normalises weights with a softmax denominator that takes the
      model's attention sink logit (`AttentionInputs.sink_logit_H`).
  """

  causal: bool = True
  bidirectional: bool = True
  cross_attention: bool = True
  decoding_state: DecodingState = DecodingState.KV_CACHE
  score_bias: bool = False
  position_schemes: frozenset[str] = frozenset({'rope'})
  fused_kernels: tuple[str, ...] = ()
  attention_weights: bool = True
  inspectable_weights: bool = True
  projections: tuple[str, ...] = ('query', 'key', 'value')
  qk_norm: bool = True
  sink: bool = False

  def __post_init__(self):
    if self.inspectable_weights and not self.attention_weights:
      raise ValueError('inspectable_weights needs attention_weights: a '
                       'mechanism that forms no weights has none to show.')


@dataclasses.dataclass(frozen=True)
class NoOptions:
  """Options of a mechanism that has none."""


@dataclasses.dataclass(frozen=True)
class AttentionInputs:
  """One call's projected heads and everything that says who sees whom.

  Attributes:
    inputs_q_BxQxE: the query-side inputs the projections were made from,
      for mechanisms that compute more from them (gates, say); in decoding,
      the step's inputs.
    query_BxQxHxD: projected queries (rotated, with 'rope' in self-attention);
      None for a mechanism that declares no 'query' projection.
    key_BxKxGxD: projected keys with G key/value heads (rotated likewise);
      in decoding self-attention, the whole cache (K = decode length).
    value_BxKxGxD: projected values with G heads.
    mask: which keys each query may see (segments, padding, causality,
      positions), in per-token form.
    bias_BxHxQxK: None, or a float32 score bias broadcastable to [B, H, Q, K]
      (position schemes), given only to mechanisms with `score_bias`.
    dropout: None, or a callable applied to attention weights (a Flax
      `Dropout`); only for mechanisms with `attention_weights`.
    dropout_rate: the rate behind `dropout` (0.0 when there is none), for
      mechanisms that draw their own dropout masks block by block.
    self_attention: queries and keys come from one sequence (explicit, from
      the Transformer; never inferred from the arrays).
    causal: the place is causal (decoder self-attention). In decoding the
      mask's own index-based causality is off (the cache's filled slots say
      which keys exist), while this stays True.
    decoding: one query step against a decoding cache (queries and keys no
      longer share an index axis; positions say where each one is).
    num_heads: H, the query heads the output must have.
    head_dim: D, the size of each head the output must have (for
      mechanisms that make their own projections).
    key_extras: the mechanism's own per-key quantities (`key_extras`), each
      [B, K, ...]; in decoding self-attention, the whole cache of them.
    rotate: the position scheme's rotation, (x_BxLxHxD, positions_BxL) ->
      rotated x (the identity for schemes that do not rotate), for
      mechanisms that rotate only part of their heads themselves; the
      frame has already rotated the projections it made.
    sink_logit_H: None, or the attention sink logit of each head (float32
      [H]), for mechanisms with `sink`: one more term exp(sink) in the
      softmax denominator (Xiao et al., 2024; Miller's softmax-off-by-one
      when 0), taking weight from the keys without adding a value.
    inputs_kv_BxKxE: the key-side inputs (None in decoding, where only the
      cache is left), for references that recompute `key_extras` from the
      paper's equations.
    capture_weights: None, or a callable that a mechanism with
      `inspectable_weights` calls once with its whole weight matrix, float32
      [B, H, Q, K] before dropout (zero where a query may not see a key,
      except at padding queries, whose rows are unread). The frame sets it
      only when the 'intermediates' collection is mutable, so training
      traces none of it.
  """

  inputs_q_BxQxE: jax.Array
  query_BxQxHxD: jax.Array
  key_BxKxGxD: jax.Array
  value_BxKxGxD: jax.Array
  mask: masks.TokenMask
  bias_BxHxQxK: jax.Array | None = None
  dropout: Callable[[jax.Array], jax.Array] | None = None
  dropout_rate: float = 0.0
  self_attention: bool = True
  causal: bool = False
  decoding: bool = False
  num_heads: int = 0
  head_dim: int = 0
  key_extras: Mapping[str, jax.Array] = dataclasses.field(default_factory=dict)
  rotate: Callable[[jax.Array, jax.Array], jax.Array] = (
      lambda x, positions: x)
  sink_logit_H: jax.Array | None = None
  inputs_kv_BxKxE: jax.Array | None = None
  capture_weights: Callable[[jax.Array], Any] | None = None


def reference_mask(inputs: AttentionInputs):
  """Who sees whom, written out plainly from the mask's definition.

  For references: independent of `TokenMask.dense`, which `attend` uses.

  Returns:
    Boolean [B, 1, Q, K].
  """
  mask = inputs.mask
  q_seg, kv_seg = mask.q_segment_ids_BxQ, mask.kv_segment_ids_BxK
  num_q, num_k = q_seg.shape[1], kv_seg.shape[1]
  allowed = jnp.logical_and(q_seg[:, :, None] == kv_seg[:, None, :],
                            kv_seg[:, None, :] > 0)
  if mask.causal:
    query_index = jnp.arange(num_q)[:, None] + (num_k - num_q)
    allowed = jnp.logical_and(allowed,
                              (jnp.arange(num_k)[None, :] <= query_index)[None])
  allowed = allowed[:, None]
  for rule in mask.rules:
    allowed = jnp.logical_and(
        allowed, rule(mask.q_positions_BxQ, mask.kv_positions_BxK))
  return allowed


class Mechanism:
  """Base of every registered mechanism; subclasses override what they are.

  A subclass sets `capabilities` (and `Options` if it has hyper-parameters)
  and implements `attend` and `reference` (and `finish` if it acts on its
  output in every place). Mechanisms with a recurrent decoding state (or
  none) implement `summarise` and `read` for cross-attention decoding, and
  recurrent ones `initial_state` and `step` for causal decoding. Instances
  are made by the frame with the mechanism's options and the layer's index
  in its stack; they hold no arrays.
  """

  Options: ClassVar[type] = NoOptions
  # Options that only change how the same function is computed; they may
  # differ when a checkpoint is resumed.
  RESUMABLE_FIELDS: ClassVar[tuple[str, ...]] = ()
  # Options for the contract tests: small blocks and windows, so that their
  # short sequences cross every boundary the mechanism has, and optional
  # parts switched on, so that they are checked too.
  TEST_OPTIONS: ClassVar[dict[str, Any]] = {}
  capabilities: ClassVar[Capabilities] = Capabilities()

  def __init__(self, options: Any = None, layer_index: int = 0):
    """Args: options (None: the defaults); layer_index: 0 for the first
    layer of the encoder or decoder stack, 1 for the next, ..."""
    self.options = self.Options() if options is None else options
    self.layer_index = layer_index

  def key_extras(self, module: nn.Module, inputs_kv_BxKxE,
                 kv_positions_BxK, rotate,
                 num_heads: int) -> dict[str, jax.Array]:
    """Per-key quantities `attend` needs beyond projected keys and values.

    Computed by the frame from the key-side inputs (in the frame's scope,
    so parameters may be created) and passed as `inputs.key_extras`; in
    decoding the cache keeps them per slot, as it keeps keys. Every array
    leads with [B, K]. A forget gate per key, or a compressed latent that
    replaces keys and values, belongs here.

    Args:
      module: the calling frame.
      inputs_kv_BxKxE: the key-side inputs.
      kv_positions_BxK: int32 positions of the keys.
      rotate: as `AttentionInputs.rotate`.
      num_heads: H, the query heads (per-head extras such as a forget gate
        need it before any query exists).
    """
    del module, inputs_kv_BxKxE, kv_positions_BxK, rotate, num_heads
    return {}

  def attend(self, module: nn.Module, inputs: AttentionInputs) -> jax.Array:
    """The attended values, [B, Q, H, D], in any float dtype.

    Args:
      module: the calling frame, in whose scope the mechanism creates its
        own parameters (`module.param`) and draws randomness
        (`module.make_rng('dropout')`).
      inputs: the projected heads and the mask.
    """
    raise NotImplementedError

  def finish(self, module: nn.Module, out_BxQxHxD,
             inputs_q_BxQxE) -> jax.Array:
    """The output as the frame projects it, [B, Q, H, D]; the identity here.

    Called by the frame on what `attend`, `step` or `read` returned (in
    decoding, one step: Q = 1), in every place; `reference` includes it.

    Args:
      module: the calling frame (parameters may be created).
      out_BxQxHxD: the mechanism's per-head output.
      inputs_q_BxQxE: the query-side inputs (the step's in decoding).
    """
    del module, inputs_q_BxQxE
    return out_BxQxHxD

  def reference(self, params: dict[str, Any], inputs: AttentionInputs,
                path: tuple[str, ...] = ()) -> jax.Array:
    """The paper's equations, plainly, `finish` included: [B, Q, H, D],
    float32.

    Args:
      params: the frame's parameters (the mechanism's own ones by the names
        `attend` gave them).
      inputs: as for `attend`, without dropout.
      path: the frame's module path, for mechanisms whose fixed random
        features depend on the layer.
    """
    raise NotImplementedError

  def reference_weights(self, params: dict[str, Any], inputs: AttentionInputs,
                        path: tuple[str, ...] = ()) -> jax.Array:
    """The weights `reference` gives the values, float32 [B, H, Q, K].

    For mechanisms with `inspectable_weights`: what `attend` must pass to
    `capture_weights` (softpick's and sigmoid's rows need not sum to one;
    differential attention's is the difference of its two maps). Arguments
    as for `reference`, which is written on top of it, so the contract
    tests of `reference` check these weights too.
    """
    raise NotImplementedError

  # Key/value-cache decoding (DecodingState.KV_CACHE).

  def decoding_cache_slots(self, max_decode_len: int) -> int:
    """How many of the latest keys a causal decoding step may read: all
    `max_decode_len` here.

    A mechanism whose query never sees a key more than N - 1 positions back
    returns N (< max_decode_len): the frame then keeps only the latest N
    keys, in a ring of N cache slots (position p in slot p mod N), and the
    mask's key positions say which position each slot holds, so `attend`
    must read positions from the mask, never from slot order. Cache memory
    and the per-step work of attention and of beam search's cache
    reordering then stay O(N) instead of O(max_decode_len).
    """
    return max_decode_len

  # Recurrent decoding (DecodingState.RECURRENT).

  def initial_state(self, module: nn.Module, key_BxKxGxD, value_BxKxGxD,
                    num_heads: int) -> Any:
    """The empty state, a pytree whose leaves lead with B."""
    raise NotImplementedError

  def step(self, module: nn.Module, state: Any, query_Bx1xHxD, key_Bx1xGxD,
           value_Bx1xGxD, key_extras) -> tuple[jax.Array, Any]:
    """(output [B, 1, H, D], new state) for one decoding step.

    `key_extras` is this step's token's `key_extras` (each [B, 1, ...]).
    """
    raise NotImplementedError

  # Cross-attention decoding (DecodingState.RECURRENT and NONE).

  def summarise(self, module: nn.Module, key_BxKxGxD, value_BxKxGxD,
                kv_segment_ids_BxK, num_heads: int, key_extras) -> Any:
    """What decoding keeps of the encoder memory, computed once.

    `key_extras` holds the memory's `key_extras` (each [B, K, ...]).
    """
    raise NotImplementedError

  def read(self, module: nn.Module, summary: Any,
           query_BxQxHxD) -> jax.Array:
    """Cross-attention output [B, Q, H, D] (or [B, 1, H, D], the same for
    every query) from the memory's summary."""
    raise NotImplementedError


def repeat_kv_heads(x_BxKxGxD, num_heads: int):
  """Repeats G key/value heads so that query head h uses head h // (H / G)."""
  return jnp.repeat(x_BxKxGxD, num_heads // x_BxKxGxD.shape[2], axis=2)
