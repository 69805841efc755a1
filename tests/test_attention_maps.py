"""Attention maps: captured weights, where they are zero, what they cost,
the files `--mode=attend` writes, and the per-head summaries.

Mechanism tests range over the registry filtered by `inspectable_weights`
and reuse the contract tests' inputs and parameters.
"""

import dataclasses
import functools
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import attention
from attention_jax.attention import base
from attention_jax.attention import frame
from attention_jax.maps import attend
from attention_jax.maps import split_stats
from attention_jax.maps import summaries
from attention_jax.train import trainer
import smoke_runs
import test_ablation as ablation_tests
import test_attention_contract as contract
import tiny_corpus

INSPECTABLE = [n for n in contract.NAMES
               if attention.get(n).capabilities.inspectable_weights]
PLACES = [place for place in contract.PLACES if place[0] in INSPECTABLE]


class _Capturing(nn.Module):
  """The mechanism's `attend`, with the frame's capture of its weights."""

  mechanism: str

  @nn.compact
  def __call__(self, inputs):
    mechanism = contract._mechanism(self.mechanism)
    extras = mechanism.key_extras(self, inputs.inputs_kv_BxKxE,
                                  inputs.mask.kv_positions_BxK, inputs.rotate,
                                  inputs.num_heads)
    capture = functools.partial(self.sow, 'intermediates',
                                'attention_weights')
    return mechanism.attend(self, dataclasses.replace(
        inputs, key_extras=extras, capture_weights=capture))


def _captured(name, causal, self_attention):
  """(sown weights, reference weights, allowed [B, 1, Q, K], real [B, Q])."""
  inputs = contract._core_inputs(name, causal=causal,
                                 self_attention=self_attention)
  module = _Capturing(name)
  params = nn.unbox(module.init(jax.random.key(5), inputs).get('params', {}))
  # As the contract tests: away from initial values, so every parameter
  # shows in the weights.
  params = jax.tree.map(lambda p: p + 0.3 * contract._normal(7, p.shape),
                        params)
  _, state = module.apply({'params': params}, inputs,
                          mutable=['intermediates'])
  sown = state['intermediates']['attention_weights']
  assert len(sown) == 1, 'weights must be handed over once per call'
  reference = contract._mechanism(name).reference_weights(params, inputs)
  allowed = base.reference_mask(inputs)
  return sown[0], reference, allowed, allowed[:, 0].any(-1)


def test_inspectable_mechanisms_are_declared_consistently():
  """The score-forming mechanisms show weights; the rest declare none."""
  for name in contract.NAMES:
    caps = attention.get(name).capabilities
    overrides = contract._overrides(attention.get(name), 'reference_weights')
    assert overrides == caps.inspectable_weights, name
  assert {'softmax', 'chunked', 'local', 'differential', 'sigmoid',
          'softpick', 'stick_breaking', 'mla'} <= set(INSPECTABLE)
  assert not {'linear', 'performer', 'retnet', 'mamba2'} & set(INSPECTABLE)
  with pytest.raises(ValueError, match='needs attention_weights'):
    base.Capabilities(attention_weights=False)


@pytest.mark.parametrize('name, causal, self_attention', PLACES)
def test_captured_weights_equal_reference(name, causal, self_attention):
  """The sown matrix is the reference's, at every real query."""
  sown, reference, _, real_BxQ = _captured(name, causal, self_attention)
  assert sown.shape == reference.shape and sown.dtype == jnp.float32
  where = real_BxQ[:, None, :, None]
  np.testing.assert_allclose(jnp.where(where, sown, 0),
                             jnp.where(where, reference, 0),
                             atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize('name, causal, self_attention', PLACES)
def test_weights_are_zero_where_a_query_may_not_look(name, causal,
                                                     self_attention):
  """Padding keys, packed neighbours and (causally) later keys get 0."""
  sown, _, allowed, real_BxQ = _captured(name, causal, self_attention)
  hidden = jnp.logical_and(~allowed, real_BxQ[:, None, :, None])
  assert float(jnp.max(jnp.where(hidden, jnp.abs(sown), 0))) == 0.0


def _frame_call(name, **kwargs):
  layer = contract._layer(name, causal=attention.get(name).capabilities.causal
                          and not attention.get(name).capabilities
                          .bidirectional)
  layer = layer.clone(config=dataclasses.replace(
      layer.config, deterministic=False, dropout_rate=0.1))
  seg = jnp.array([[1, 1, 1, 1, 0]], jnp.int32)
  x = contract._normal(0, (1, 5, contract.WIDTH))
  rngs = {'dropout': jax.random.key(2)}
  variables = layer.init({'params': jax.random.key(1), **rngs}, x, x, seg,
                         seg, mutable=True)
  assert set(variables) == {'params'}, 'init sows nothing'
  return layer.apply(variables, x, x, seg, seg, rngs=rngs, **kwargs)


@pytest.mark.parametrize('name', INSPECTABLE)
def test_training_never_traces_the_capture(name, monkeypatch):
  """Without a mutable 'intermediates' (training; `init`, even with every
  collection mutable) the frame never sows, so nothing more is traced; with
  it, exactly one [B, H, Q, K] map."""
  _, state = _frame_call(name, mutable=['intermediates'])
  (weights,) = state['intermediates']['attention_weights']
  assert weights.shape == (1, contract.HEADS, 5, 5)

  def refuse(*args, **kwargs):
    raise AssertionError('sow called in a training pass')

  monkeypatch.setattr(frame.MultiHeadAttention, 'sow', refuse)
  _frame_call(name)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A 2-step run of the tiny corpus (tiny_corpus.py)."""
  directory = tmp_path_factory.mktemp('maps')
  config = tiny_corpus.config(directory)
  config.eval.final_sentences = 0
  path = str(directory / 'run')
  trainer.train_and_evaluate(config, path)
  return path


def test_attend_writes_cropped_maps_and_figures(workdir, tmp_path):
  """A reference line is teacher-forced as given, a plain line with its
  translation; every map is H x Q x K over real pieces, rows of softmax
  sum to one, and each sentence has its PNGs and alignment figure."""
  out = str(tmp_path / 'maps')
  index = attend.attend(
      workdir, ['casa perro 01.\tHOUSE DOG 01.\n', '\n', 'gato rojo\n'], out)
  assert [s['target_is'] for s in index['sentences']] == ['reference',
                                                         'translation']
  assert index['sentences'][0]['target'] == 'HOUSE DOG 01.'
  assert index['without_weights'] == {}
  for sentence in index['sentences']:
    directory = os.path.join(out, sentence['directory'])
    with np.load(os.path.join(directory, 'weights.npz')) as arrays:
      source_len = len(arrays['source_pieces'])
      target_len = len(arrays['target_pieces'])
      assert arrays['source_pieces'][-1] == '</s>'
      shapes = {'encoder/layer_0/self': (source_len, source_len),
                'decoder/layer_0/self': (target_len, target_len),
                'decoder/layer_0/cross': (target_len, source_len)}
      for name, (q, k) in shapes.items():
        weights = arrays[name]
        assert weights.shape[1:] == (q, k), name
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
        pngs = name.replace('/', '_') + '.png'
        assert os.path.getsize(os.path.join(directory, pngs)) > 0
      # Causal: nothing above the diagonal.
      assert np.all(np.triu(arrays['decoder/layer_0/self'], k=1) == 0)
    assert os.path.getsize(os.path.join(directory, 'alignment.png')) > 0
  with open(os.path.join(out, 'index.json')) as f:
    assert json.load(f) == index


def test_attend_says_which_layers_form_no_weights(workdir, tmp_path, capsys):
  """A mechanism without weights (linear) gets a line and no map."""
  _, cfg, sp, params = attend.translate.load_params(
      workdir, attend.sharding.make_mesh(
          attend.ml_collections.ConfigDict({'data': -1, 'fsdp': 1})))
  linear_cfg = cfg.replace(decoder_self_attention='linear')
  index = attend.write_maps(str(tmp_path), linear_cfg, params, sp,
                            [('casa', 'HOUSE', 'reference')])
  assert index['without_weights'] == {'decoder/layer_0/self': 'linear'}
  assert 'decoder/layer_0/self: linear forms no attention weights' in (
      capsys.readouterr().out)
  with np.load(tmp_path / '0000' / 'weights.npz') as arrays:
    assert 'decoder/layer_0/self' not in arrays
    assert 'decoder/layer_0/cross' in arrays


def test_attention_stats_command_writes_json_and_csv(workdir):
  result = subprocess.run(
      [sys.executable, 'launch.py', '--mode=attention_stats',
       f'--workdir={workdir}', '--stats_split=validation',
       '--stats_sentences=4'],
      capture_output=True, text=True, check=False, cwd=smoke_runs.REPO)
  assert result.returncode == 0, result.stderr
  stem = os.path.join(workdir, 'attention_stats', 'validation')
  with open(stem + '.json') as f:
    written = json.load(f)
  assert written['sentences'] == 4
  heads = {(row['map'], row['head']) for row in written['heads']}
  assert ('decoder/layer_0/cross', 0) in heads
  with open(stem + '.csv') as f:
    assert len(f.readlines()) == len(written['heads']) + 1


def test_uniform_rows_have_entropy_log_k():
  weights = np.full((2, 3, 5), 0.2)
  stats, valid = summaries.query_statistics(weights, causal=False)
  assert valid.all()
  np.testing.assert_allclose(stats['entropy_nats'], np.log(5))
  np.testing.assert_allclose(stats['first_key_share'], 0.2)
  # Query i, keys 0..4: mean |i - j| over a uniform row.
  expected = [np.mean(np.abs(i - np.arange(5))) for i in range(3)]
  np.testing.assert_allclose(stats['mean_distance'][0], expected)


def test_one_hot_on_the_first_key_is_a_full_sink():
  weights = np.zeros((1, 4, 4))
  weights[..., 0] = 1.0
  rows = summaries.head_summaries([{'decoder/layer_0/self': weights}])
  (row,) = rows
  assert row['first_key_share'] == 1.0 and row['entropy_nats'] == 0.0
  # Causal: the last visible key is the query itself (query 0: the first).
  assert row['last_key_share'] == pytest.approx(0.25)
  np.testing.assert_allclose(row['mean_distance'], np.mean([0, 1, 2, 3]))


def test_rows_without_weights_are_left_out_and_magnitudes_are_compared():
  """Stick-breaking's first query sees nothing; differential weights may
  be negative."""
  weights = np.array([[[0.0, 0.0], [-1.0, 1.0]]])
  stats, valid = summaries.query_statistics(weights, causal=True)
  assert valid.tolist() == [[False, True]]
  assert stats['entropy_nats'][0, 1] == pytest.approx(np.log(2))
  (row,) = summaries.head_summaries([{'decoder/layer_0/self': weights}])
  assert row['queries'] == 1 and row['last_key_share'] == 0.5


def test_study_report_has_a_table_and_a_plot_per_variant(tmp_path):
  """Points holding attention_stats/test.json show in report.md; a layer
  without weights says so."""
  study = ablation_tests.study_lib.load(ablation_tests._write_study(
      tmp_path, "study.grid({'attention': ('model.attention', "
      "('softmax', 'linear'))}, seeds=(0,))"))
  workdir = str(tmp_path / 'study')
  runner = ablation_tests.runner
  runner.write_manifest(study, workdir, [], 0)
  uniform = {'encoder/layer_0/self': np.full((2, 3, 3), 1 / 3),
             'decoder/layer_0/cross': np.full((2, 4, 3), 1 / 3)}
  for variant, without in (('softmax', {}),
                           ('linear', {'decoder/layer_0/self': 'linear'})):
    point = study.point(f'attention={variant}/seed=0')
    path = runner.point_dir(workdir, point)
    config = runner.budgeted_config(study, point, 0)
    ablation_tests._finish_scored_point(path, config, ['a b'], ['a b'])
    os.makedirs(os.path.join(path, 'attention_stats'))
    split_stats.write_stats(
        os.path.join(path, 'attention_stats', 'test'),
        summaries.head_summaries([uniform]),
        {name: variant for name in uniform}, without, 1)
  text = ablation_tests.report.write_report(workdir, num_samples=10)
  assert '## Attention heads' in text
  row = next(line for line in text.splitlines() if line.startswith(
      '| attention=softmax | encoder/layer_0/self |'))
  assert f'| {np.log(3):.2f} |' in row
  assert ('| attention=linear | decoder/layer_0/self | linear | 1 | '
          'no weights |') in text
  for variant in ('softmax', 'linear'):
    assert os.path.getsize(os.path.join(
        workdir, f'attention_heads_attention-{variant}.png')) > 0
