"""The attention contract, checked for every registered mechanism.

Every test ranges over the registry, filtered by declared capabilities; a new
mechanism file is checked here without editing this file. A mechanism whose
`reference` is missing fails `test_mechanism_is_complete`.
"""

import dataclasses
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import attention
from attention_jax.attention import base
from attention_jax.attention import frame
from attention_jax.attention import fused
from attention_jax.attention import masks
from attention_jax.attention import positions
from attention_jax.model.config import TransformerConfig
import decoding_checks

NAMES = attention.names()
HEADS, KV_HEADS, DEPTH, WIDTH = 4, 2, 8, 16


def _cls(name):
  return attention.get(name)


CAUSAL = [n for n in NAMES if _cls(n).capabilities.causal]
CROSS = [n for n in NAMES if _cls(n).capabilities.cross_attention]
# Mechanisms are made for the second layer of a stack, so that formulas with
# a layer-dependent term (differential attention's lambda_init) show it.
LAYER_INDEX = 1
IN_ATTENTION_SCHEMES = [
    (name, scheme) for name in NAMES
    for scheme in sorted(_cls(name).capabilities.position_schemes)
]


def _options(name):
  return attention.MECHANISMS.options(name, _cls(name).TEST_OPTIONS)


def _mechanism(name):
  return _cls(name)(_options(name), LAYER_INDEX)


def _normal(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape)


def _positions(segment_ids):
  """Position of each token within its segment."""
  segment_ids = np.asarray(segment_ids)
  out = np.zeros_like(segment_ids)
  for row in range(segment_ids.shape[0]):
    for i in range(1, segment_ids.shape[1]):
      same = segment_ids[row, i] == segment_ids[row, i - 1]
      out[row, i] = out[row, i - 1] + 1 if same else 0
  return jnp.asarray(out, jnp.int32)


# Two rows: packed segments and trailing padding (0), as batches make them.
KV_SEGMENTS = jnp.array([[1, 1, 1, 1, 1, 2, 2, 2, 0],
                         [1, 1, 1, 1, 1, 1, 1, 0, 0]], jnp.int32)
CROSS_Q_SEGMENTS = jnp.array([[1, 1, 2, 2, 0],
                              [1, 1, 1, 0, 0]], jnp.int32)


class _Core(nn.Module):
  """The mechanism's `attend` and `finish` alone, as the frame calls them."""

  mechanism: str

  @nn.compact
  def __call__(self, inputs):
    mechanism = _mechanism(self.mechanism)
    extras = mechanism.key_extras(self, inputs.inputs_kv_BxKxE,
                                  inputs.mask.kv_positions_BxK, inputs.rotate,
                                  inputs.num_heads)
    out = mechanism.attend(
        self, dataclasses.replace(inputs, key_extras=extras))
    return mechanism.finish(self, out, inputs.inputs_q_BxQxE)


def _core_inputs(name, *, causal, self_attention, seed=0):
  kv_seg = KV_SEGMENTS
  q_seg = kv_seg if self_attention else CROSS_Q_SEGMENTS
  batch, q_len, kv_len = 2, q_seg.shape[1], kv_seg.shape[1]
  bias = sink = None
  if _cls(name).capabilities.score_bias:
    bias = 0.5 * _normal(seed + 4, (batch, HEADS, q_len, kv_len))
  if _cls(name).capabilities.sink:
    sink = _normal(seed + 6, (HEADS,))
  inputs_q = _normal(seed, (batch, q_len, WIDTH))
  return base.AttentionInputs(
      inputs_q_BxQxE=inputs_q,
      inputs_kv_BxKxE=(inputs_q if self_attention
                       else _normal(seed + 5, (batch, kv_len, WIDTH))),
      sink_logit_H=sink,
      query_BxQxHxD=_normal(seed + 1, (batch, q_len, HEADS, DEPTH)),
      key_BxKxGxD=_normal(seed + 2, (batch, kv_len, KV_HEADS, DEPTH)),
      value_BxKxGxD=_normal(seed + 3, (batch, kv_len, KV_HEADS, DEPTH)),
      mask=masks.TokenMask(q_seg, kv_seg, _positions(q_seg),
                           _positions(kv_seg), causal=causal),
      bias_BxHxQxK=bias, self_attention=self_attention, causal=causal,
      num_heads=HEADS, head_dim=DEPTH,
  )


PLACES = [(name, causal, self_attention)
          for name in NAMES
          for causal, self_attention, capability in (
              (False, True, 'bidirectional'), (True, True, 'causal'),
              (False, False, 'cross_attention'))
          if getattr(_cls(name).capabilities, capability)]


@pytest.mark.parametrize('name, causal, self_attention', PLACES)
def test_attend_equals_reference(name, causal, self_attention):
  """Outputs and gradients (inputs and parameters) at every real query."""
  inputs = _core_inputs(name, causal=causal, self_attention=self_attention)
  core = _Core(name)
  params = nn.unbox(core.init(jax.random.key(5), inputs).get('params', {}))
  # Away from the initial values (an identity, a constant), so every
  # parameter's role in the formula shows.
  params = jax.tree.map(lambda p: p + 0.3 * _normal(7, p.shape), params)
  mechanism = _mechanism(name)
  real_BxQ = base.reference_mask(inputs)[:, 0].any(-1)
  cotangent = _normal(6, inputs.query_BxQxHxD.shape) * real_BxQ[..., None,
                                                                 None]

  def with_arrays(arrays):
    return dataclasses.replace(inputs, **arrays)

  arrays = {k: getattr(inputs, k) for k in
            ('inputs_q_BxQxE', 'inputs_kv_BxKxE', 'query_BxQxHxD',
             'key_BxKxGxD', 'value_BxKxGxD')}

  def ours(params, arrays):
    return core.apply({'params': params}, with_arrays(arrays)).astype(
        jnp.float32)

  def theirs(params, arrays):
    return mechanism.reference(params, with_arrays(arrays))

  np.testing.assert_allclose(
      jnp.where(real_BxQ[..., None, None], ours(params, arrays), 0),
      jnp.where(real_BxQ[..., None, None], theirs(params, arrays), 0),
      atol=2e-5, rtol=2e-5)
  grads = [jax.grad(lambda p, a, f=f: jnp.sum(f(p, a) * cotangent),
                    argnums=(0, 1))(params, arrays) for f in (ours, theirs)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=5e-5,
                                                       rtol=5e-4), *grads)


def _layer(name, *, causal=False, self_attention=True, decode=False,
           scheme='sinusoidal'):
  config = frame.AttentionConfig(
      mechanism=name, options=_options(name), num_heads=HEADS,
      head_dim=DEPTH, num_kv_heads=KV_HEADS, position_scheme=scheme,
      deterministic=True, decode=decode, layer_index=LAYER_INDEX)
  return frame.MultiHeadAttention(config, causal=causal,
                                  self_attention=self_attention)


def _self_call(layer, params, x, segment_ids, **kwargs):
  pos = _positions(segment_ids)
  return layer.apply({'params': params}, x, x, segment_ids, segment_ids, pos,
                     pos, **kwargs)


@pytest.mark.parametrize('name', CAUSAL)
def test_causal_through_gradients(name):
  """No output depends on a later input."""
  layer = _layer(name, causal=True)
  seg = jnp.ones((1, 7), jnp.int32)
  x = _normal(0, (1, 7, WIDTH))
  params = layer.init(jax.random.key(1), x, x, seg, seg)['params']
  jacobian = jax.jacrev(lambda x: _self_call(layer, params, x, seg))(x)
  jac_QxK = jnp.abs(jacobian[0, :, :, 0]).sum((1, 3))
  later = jnp.triu(jnp.ones((7, 7), bool), k=1)
  assert float(jnp.max(jnp.where(later, jac_QxK, 0))) < 1e-6
  # Each output depends on its own token; the first need not: a mechanism
  # that attends only to keys before the query (stick-breaking) outputs a
  # constant there.
  assert float(jnp.min(jnp.diagonal(jac_QxK)[1:])) > 0


def _perturb(x, where_BxL, seed):
  return jnp.where(where_BxL[..., None], _normal(seed, x.shape), x)


@pytest.mark.parametrize('name, causal, self_attention', PLACES)
def test_padding_and_packed_neighbours_change_nothing(name, causal,
                                                      self_attention):
  layer = _layer(name, causal=causal, self_attention=self_attention)
  kv_seg = KV_SEGMENTS
  q_seg = kv_seg if self_attention else CROSS_Q_SEGMENTS
  x_q = _normal(0, q_seg.shape + (WIDTH,))
  x_kv = x_q if self_attention else _normal(1, kv_seg.shape + (WIDTH,))

  def run(params, x_q, x_kv):
    return layer.apply({'params': params}, x_q, x_kv, q_seg, kv_seg,
                       _positions(q_seg), _positions(kv_seg))

  params = layer.init(jax.random.key(2), x_q, x_kv, q_seg, kv_seg)['params']
  before = run(params, x_q, x_kv)
  for segment in (1, 2):
    others_q, others_kv = q_seg != segment, kv_seg != segment
    x_q2 = _perturb(x_q, others_q, 3)
    x_kv2 = x_q2 if self_attention else _perturb(x_kv, others_kv, 4)
    after = run(params, x_q2, x_kv2)
    keep = (q_seg == segment)[..., None]
    np.testing.assert_allclose(jnp.where(keep, after, 0),
                               jnp.where(keep, before, 0), atol=1e-5)


@pytest.mark.parametrize('name', CAUSAL)
def test_cached_decoding_equals_full_causal_pass(name):
  seg = jnp.ones((2, 6), jnp.int32)
  x = _normal(0, (2, 6, WIDTH))
  layer = _layer(name, causal=True)
  params = layer.init(jax.random.key(1), x, x, seg, seg)['params']
  full = _self_call(layer, params, x, seg)
  decoder = _layer(name, causal=True, decode=True)
  _, variables = decoder.apply({'params': params}, x, x, seg, seg,
                               mutable=['cache'])
  steps = []
  for t in range(x.shape[1]):
    x_t, seg_t = x[:, t:t + 1], seg[:, t:t + 1]
    out, variables = decoder.apply({'params': params, **variables}, x_t, x_t,
                                   seg_t, seg_t, mutable=['cache'])
    steps.append(out)
  np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=1e-5)


@pytest.mark.parametrize('name', CROSS)
def test_cached_cross_attention_equals_full_pass(name):
  memory_seg = jnp.array([[1] * 7, [1] * 4 + [0] * 3], jnp.int32)
  memory = _normal(0, (2, 7, WIDTH))
  x = _normal(1, (2, 5, WIDTH))
  q_seg = jnp.ones((2, 5), jnp.int32)
  layer = _layer(name, self_attention=False)
  params = layer.init(jax.random.key(2), x, memory, q_seg, memory_seg)[
      'params']
  full = layer.apply({'params': params}, x, memory, q_seg, memory_seg)
  decoder = _layer(name, self_attention=False, decode=True)
  _, variables = decoder.apply({'params': params}, x, memory, q_seg,
                               memory_seg, mutable=['cache', frame.MEMORY])
  steps = []
  for t in range(x.shape[1]):
    out, updated = decoder.apply(
        {'params': params, **variables}, x[:, t:t + 1], memory,
        q_seg[:, t:t + 1], memory_seg, mutable=['cache'])
    variables = {**variables, **updated}
    steps.append(out)
  np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=1e-5)


@pytest.mark.parametrize('name, scheme', IN_ATTENTION_SCHEMES)
def test_declared_position_scheme_is_honoured(name, scheme):
  """Self-attention under the scheme sees token order, and the order within
  one sentence only; an equal copy of the inputs is still self-attention."""
  causal = _cls(name).capabilities.causal
  layer = _layer(name, causal=causal, scheme=scheme)
  seg = KV_SEGMENTS
  x = _normal(0, seg.shape + (WIDTH,))
  params = layer.init(jax.random.key(1), x, x, seg, seg)['params']
  # A random offset bias table, so a relative-bias table is not all zeros.
  params = jax.tree.map(lambda p: p + 0.3 * _normal(2, p.shape), params)
  out = _self_call(layer, params, x, seg)
  copy = layer.apply({'params': params}, x, jnp.array(x), seg, seg,
                     _positions(seg), _positions(seg))
  np.testing.assert_allclose(copy, out, atol=1e-6)
  # Swap two tokens of row 1: without positions the outputs would swap.
  order = jnp.array([1, 0, 2, 3, 4, 5, 6, 7, 8])
  swapped = _self_call(layer, params, x.at[1].set(x[1, order]), seg)
  assert float(jnp.max(jnp.abs(swapped[1, order] - out[1]))) > 1e-4
  # Row 0's second sentence does not notice a change to its first.
  changed = _self_call(layer, params, _perturb(x, seg == 1, 3), seg)
  np.testing.assert_allclose(changed[0, 5:8], out[0, 5:8], atol=1e-5)


@pytest.mark.parametrize('name', NAMES)
def test_transformer_cached_decoding_equals_teacher_forcing(name):
  caps = _cls(name).capabilities
  if caps.causal and caps.bidirectional and caps.cross_attention:
    place = 'attention'
  else:
    place = 'decoder_self_attention' if caps.causal else 'cross_attention'
  decoding_checks.assert_cached_decoding_equals_full_forward(
      TransformerConfig(
          vocab_size=50, emb_dim=WIDTH, num_heads=HEADS, qkv_dim=HEADS * 4,
          mlp_dim=32, num_encoder_layers=1, num_decoder_layers=1, max_len=8,
          num_kv_heads=KV_HEADS, deterministic=True,
          attention_options=((name, _options(name)),), **{place: name}))


def _overrides(cls, method: str) -> bool:
  return getattr(cls, method) is not getattr(base.Mechanism, method)


@pytest.mark.parametrize('name', NAMES)
def test_mechanism_is_complete(name):
  """Reference, decoding methods, options and capabilities are consistent."""
  cls = _cls(name)
  caps = cls.capabilities
  assert caps.causal or caps.bidirectional or caps.cross_attention
  assert _overrides(cls, 'attend') and _overrides(cls, 'reference'), (
      f'{name} must implement attend and a reference from its paper')
  state = caps.decoding_state
  if state is base.DecodingState.RECURRENT:
    for method in ('initial_state', 'step', 'summarise', 'read'):
      assert _overrides(cls, method), f'{name} must implement {method}'
  if state is base.DecodingState.NONE:
    assert not caps.causal
    assert _overrides(cls, 'summarise') and _overrides(cls, 'read')
  if _overrides(cls, 'decoding_cache_slots'):
    # A ring of the latest keys is a key/value cache, and the decoding tests
    # above decode 6 tokens: its test options must make the ring wrap.
    assert state is base.DecodingState.KV_CACHE
    assert 1 <= _mechanism(name).decoding_cache_slots(6) < 6, name
  options = cls.Options()
  assert dataclasses.is_dataclass(options)
  assert dataclasses.fields(options) == () or options.__dataclass_params__.frozen
  fields = {f.name for f in dataclasses.fields(options)}
  assert set(cls.RESUMABLE_FIELDS) <= fields
  assert set(cls.TEST_OPTIONS) <= fields
  for scheme in caps.position_schemes:
    acts_in = positions.SCHEMES.get(scheme).acts_in
    assert acts_in != positions.EMBEDDING
    assert acts_in != positions.SCORE_BIAS or caps.score_bias
  assert set(caps.fused_kernels) <= set(fused.IMPLEMENTATIONS) - {'auto',
                                                                   'xla'}
  assert set(caps.projections) <= {'query', 'key', 'value'}


def test_readme_has_a_row_for_every_mechanism():
  readme = os.path.join(os.path.dirname(__file__), '..', 'README.md')
  with open(readme, encoding='utf-8') as f:
    rows = set(re.findall(r'^\| `([a-z_0-9]+)` \|', f.read(), re.MULTILINE))
  missing = sorted(set(NAMES) - rows)
  assert not missing, f'README.md mechanism table lacks rows for {missing}'


@pytest.mark.parametrize('old, new', sorted(
    attention.MECHANISMS.renamed().items()))
def test_renamed_mechanisms_are_refused_naming_the_new_name(old, new):
  with pytest.raises(ValueError, match=f'now called {new!r}'):
    attention.get(old)
