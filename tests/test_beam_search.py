"""Beam search against hand-worked answers and brute-force enumeration.

The toy decoder looks up next-token log-probabilities in a table indexed by
batch row and by the prefix generated so far. The prefix lives only in the
cache, so any cache that is not reordered with its beam reads the wrong row.
Tokens: 0 is bos/pad (never emitted), 1 is EOS, 2 and 3 are words "a", "b".
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.decode import beam_search as bs

VOCAB = 4
EOS, A, B = 1, 2, 3
WORDS = (EOS, A, B)


def prefix_node(prefix, vocab=VOCAB):
  """Unique table row for a prefix: a base-`vocab` trie numbering."""
  node = 0
  for token in prefix:
    node = node * vocab + token + 1
  return node


def num_nodes(max_len):
  """Table rows needed for every prefix the decoder can be asked about."""
  return prefix_node([VOCAB - 1] * (max_len - 1)) + 1


def table_from_probs(probs_by_prefix, max_len):
  """Log-probability table [nodes, VOCAB] from {prefix: {token: prob}}.

  Unlisted prefixes are uniform over the words.
  """
  table = np.full((num_nodes(max_len), VOCAB), -np.inf)
  table[:, WORDS] = np.log(1 / len(WORDS))
  for prefix, probs in probs_by_prefix.items():
    row = np.full(VOCAB, -np.inf)
    for token, prob in probs.items():
      row[token] = np.log(prob)
    table[prefix_node(prefix)] = row
  return table


def random_table(rng, max_len):
  """Random log-probability table over the words; bos/pad gets none."""
  table = np.full((num_nodes(max_len), VOCAB), -np.inf)
  table[:, WORDS] = rng.normal(size=(num_nodes(max_len), len(WORDS)))
  return table - np.logaddexp.reduce(table, axis=-1, keepdims=True)


def make_decoder(logp_table_BxSxV, beam_size, max_len):
  """Returns (tokens_to_logits, init_cache) for a table per batch row."""
  batch_size, _, vocab = logp_table_BxSxV.shape
  row_N = jnp.arange(batch_size * beam_size) // beam_size

  def tokens_to_logits(last_tokens_N, cache):
    step = cache['step']
    # Step 0 receives bos, which is not part of the prefix.
    history_NxT = jnp.where(step > 0,
                            cache['history'].at[:, step - 1].set(last_tokens_N),
                            cache['history'])
    node_N = jnp.zeros_like(last_tokens_N)
    for pos in range(history_NxT.shape[1]):
      node_N = jnp.where(pos < step, node_N * vocab + history_NxT[:, pos] + 1,
                         node_N)
    logits_NxV = jnp.asarray(logp_table_BxSxV)[row_N, node_N]
    return logits_NxV, {'history': history_NxT, 'step': step + 1}

  init_cache = bs.expand_to_beams(
      {'history': jnp.zeros((batch_size, max_len), jnp.int32),
       'step': jnp.array(0, jnp.int32)}, beam_size)
  return tokens_to_logits, init_cache


def run_beam(tables, beam_size, alpha, max_len):
  """Beam search on the toy decoder; one table per batch row."""
  tables = np.asarray(tables)
  tokens_to_logits, cache = make_decoder(tables, beam_size, max_len)
  seqs, scores = bs.beam_search(
      tokens_to_logits, cache, tables.shape[0], beam_size=beam_size,
      alpha=alpha, max_decode_len=max_len, eos_id=EOS)
  return np.asarray(seqs), np.asarray(scores)


def brute_force(table, alpha, max_len, words=(A, B)):
  """All finished hypotheses as (score, padded sequence), best first."""
  results = []
  for length in range(1, max_len + 1):
    for prefix in itertools.product(words, repeat=length - 1):
      seq = prefix + (EOS,)
      logp = sum(table[prefix_node(seq[:i]), tok] for i, tok in enumerate(seq))
      score = logp / ((5 + length) / 6)**alpha
      results.append((score, seq + (bs.PAD_ID,) * (max_len - length)))
  return sorted(results, reverse=True)


def greedy(table, max_len):
  """The sequence that takes the most likely token at every step."""
  seq = ()
  while len(seq) < max_len and EOS not in seq:
    seq += (int(np.argmax(table[prefix_node(seq)])),)
  return seq


def test_expand_to_beams_is_batch_major_and_keeps_scalars():
  tree = {'x': jnp.array([[1, 2], [3, 4]]), 'i': jnp.array(7)}
  out = bs.expand_to_beams(tree, 3)
  np.testing.assert_array_equal(out['x'], [[1, 2]] * 3 + [[3, 4]] * 3)
  assert out['i'].shape == () and int(out['i']) == 7


def test_beam_finds_best_where_greedy_does_not():
  # Greedy: a (.6), a (.45), EOS (.5) -> p = .135.
  # Beam 2: step 1 keeps {a .6, b .4}; step 2 finishes "b EOS" (.36) and
  # "a EOS" (.15) and keeps {a a .27, a b .18}; step 3 finds nothing above .36.
  table = table_from_probs({
      (): {A: .6, B: .4},
      (A,): {EOS: .25, A: .45, B: .3},
      (B,): {EOS: .9, A: .05, B: .05},
      (A, A): {EOS: .5, A: .25, B: .25},
  }, max_len=3)
  seqs, scores = run_beam([table], beam_size=2, alpha=0.0, max_len=3)
  best_score, best_seq = brute_force(table, 0.0, 3)[0]

  assert greedy(table, 3) == (A, A, EOS)
  assert tuple(seqs[0, 0]) == best_seq == (B, EOS, bs.PAD_ID)
  np.testing.assert_allclose(scores[0, 0], best_score, rtol=1e-5)
  np.testing.assert_allclose(best_score, np.log(.36), rtol=1e-6)


@pytest.mark.parametrize('alpha', [0.0, 0.6, 2.0])
@pytest.mark.parametrize('seed', range(4))
def test_wide_beam_returns_brute_force_top_k(alpha, seed):
  # With 3 word-or-EOS tokens and length 3 there are at most 12 live
  # candidates per step, so beam 6 (2K = 12) considers every one and its K
  # finished hypotheses must be the exact top K of all 7.
  table = random_table(np.random.default_rng(seed), max_len=3)
  seqs, scores = run_beam([table], beam_size=6, alpha=alpha, max_len=3)
  expected = brute_force(table, alpha, 3)[:6]

  assert [tuple(s) for s in seqs[0]] == [seq for _, seq in expected]
  np.testing.assert_allclose(scores[0], [s for s, _ in expected], rtol=1e-5)


def test_length_penalty_changes_winner():
  # "EOS": log .6 = -0.511 over lp(1) = 1.
  # "a a EOS": log(.4 * .9 * 1) = -1.022 over lp(3) = (8/6) ** alpha.
  # "a EOS": log(.4 * .1) = -3.219, worse than both for any alpha here.
  # alpha = 0: -0.511 > -1.022, the short one wins.
  # alpha = 3: lp(3) = 2.370, -1.022 / 2.370 = -0.431 > -0.511, the long wins.
  table = table_from_probs({
      (): {EOS: .6, A: .4},
      (A,): {EOS: .1, A: .9},
      (A, A): {EOS: 1.0},
  }, max_len=3)
  for alpha, winner in [(0.0, (EOS, 0, 0)), (3.0, (A, A, EOS))]:
    seqs, scores = run_beam([table], beam_size=2, alpha=alpha, max_len=3)
    best_score, best_seq = brute_force(table, alpha, 3)[0]
    assert tuple(seqs[0, 0]) == best_seq == winner
    np.testing.assert_allclose(scores[0, 0], best_score, rtol=1e-5)


def test_early_stopping_bounds_alive_beams_with_max_length_penalty():
  # alpha = 3, lp(1) = 1, lp(2) = 1.588, lp(3) = 2.370.
  # After step 2 the finished slots hold "EOS" (log .5 = -0.693) and "b EOS"
  # (log .2 / lp(2) = -1.013); alive "a a" has raw log .3 = -1.204, below
  # both, yet "a a EOS" ends at -1.204 / lp(3) = -0.508 and wins. Stopping on
  # raw alive scores would return "EOS".
  table = table_from_probs({
      (): {EOS: .5, A: .3, B: .2},
      (A,): {A: 1.0},
      (B,): {EOS: 1.0},
      (A, A): {EOS: 1.0},
  }, max_len=3)
  seqs, scores = run_beam([table], beam_size=2, alpha=3.0, max_len=3)
  assert tuple(seqs[0, 0]) == (A, A, EOS)
  np.testing.assert_allclose(scores[0, 0], np.log(.3) / (8 / 6)**3, rtol=1e-5)


def test_search_stops_once_no_alive_beam_can_win():
  # After step 2 both finished slots, "b EOS" (.36) and "a EOS" (.24), beat
  # every alive beam (best "a a" .21) at alpha = 0, so the decoder is called
  # twice, not max_decode_len = 5 times.
  table = table_from_probs({
      (): {A: .6, B: .4},
      (A,): {EOS: .4, A: .35, B: .25},
      (B,): {EOS: .9, A: .05, B: .05},
  }, max_len=5)
  tokens_to_logits, cache = make_decoder(table[None], 2, max_len=5)
  calls = []

  def counted(last_tokens_N, cache):
    jax.debug.callback(lambda: calls.append(1))
    return tokens_to_logits(last_tokens_N, cache)

  seqs, _ = bs.beam_search(counted, cache, 1, beam_size=2, alpha=0.0,
                           max_decode_len=5, eos_id=EOS)
  jax.effects_barrier()
  assert tuple(np.asarray(seqs[0, 0])) == (B, EOS, 0, 0, 0)
  assert len(calls) == 2


def test_cache_follows_reselected_beams():
  # Step 2 keeps {a a .33, a b .27}: both children of beam 0, so beam 1 must
  # take beam 0's cache. With the right history "a b EOS" scores
  # .27 * .9 = .243 and wins; had beam 1 kept its old history "b", it would
  # read the "b b" row (EOS .1) and "a a EOS" (.33 * .5 = .165) would win.
  # The scalar `step` leaf is indexed as a scalar, so gathering it would fail.
  table = table_from_probs({
      (): {A: .6, B: .4},
      (A,): {A: .55, B: .45},
      (B,): {A: .5, B: .5},
      (A, A): {EOS: .5, A: .25, B: .25},
      (A, B): {EOS: .9, A: .05, B: .05},
      (B, B): {EOS: .1, A: .45, B: .45},
  }, max_len=3)
  seqs, scores = run_beam([table], beam_size=2, alpha=0.0, max_len=3)

  np.testing.assert_array_equal(seqs[0], [[A, B, EOS], [A, A, EOS]])
  np.testing.assert_allclose(scores[0], np.log([.243, .165]), rtol=1e-5)


def test_batch_rows_are_independent():
  rng = np.random.default_rng(7)
  tables = [random_table(rng, max_len=3) for _ in range(3)]
  seqs, scores = run_beam(tables, beam_size=6, alpha=0.6, max_len=3)

  for row, table in enumerate(tables):
    alone_seqs, alone_scores = run_beam([table], beam_size=6, alpha=0.6,
                                        max_len=3)
    np.testing.assert_array_equal(seqs[row], alone_seqs[0])
    np.testing.assert_allclose(scores[row], alone_scores[0], rtol=1e-6)
    best_score, best_seq = brute_force(table, 0.6, 3)[0]
    assert tuple(seqs[row, 0]) == best_seq
    np.testing.assert_allclose(scores[row, 0], best_score, rtol=1e-5)
  assert len({tuple(s[0]) for s in seqs}) > 1


def test_row_without_eos_returns_alive_beams():
  # EOS is impossible in row 0, so its best alive beams of full length come
  # back, scored like finished ones: log-prob sums over lp(3); row 1 finishes
  # normally.
  rng = np.random.default_rng(3)
  no_eos = random_table(rng, max_len=3)
  no_eos[:, EOS] = -np.inf
  no_eos = no_eos - np.logaddexp.reduce(no_eos, axis=-1, keepdims=True)
  normal = random_table(rng, max_len=3)
  seqs, scores = run_beam([no_eos, normal], beam_size=6, alpha=2.0, max_len=3)

  expected = sorted(
      ((sum(no_eos[prefix_node(seq[:i]), tok] for i, tok in enumerate(seq)),
        seq) for seq in itertools.product((A, B), repeat=3)),
      reverse=True)[:6]
  assert [tuple(s) for s in seqs[0]] == [seq for _, seq in expected]
  np.testing.assert_allclose(
      scores[0], [s / bs.length_penalty(3, 2.0) for s, _ in expected],
      rtol=1e-5)
  assert (seqs[1, :, :] == EOS).any(axis=1).all()


@pytest.mark.parametrize('alpha', [0.0, 0.6])
@pytest.mark.parametrize('seed', range(3))
def test_fewer_than_k_finished_are_topped_up_with_alive_beams(alpha, seed):
  # EOS is possible only as the first token, so one hypothesis finishes and
  # the other three slots must hold the best full-length alive beams (beam 4
  # keeps all 8 candidates of the last step, so they are the exact top 3),
  # never -inf all-padding placeholders.
  table = random_table(np.random.default_rng(seed), max_len=3)
  table[1:, EOS] = -np.inf
  table = table - np.logaddexp.reduce(table, axis=-1, keepdims=True)
  seqs, scores = run_beam([table], beam_size=4, alpha=alpha, max_len=3)

  alive = sorted(
      ((sum(table[prefix_node(seq[:i]), tok] for i, tok in enumerate(seq))
        / bs.length_penalty(3, alpha), seq)
       for seq in itertools.product((A, B), repeat=3)),
      reverse=True)[:3]
  assert [tuple(s) for s in seqs[0]] == [(EOS, 0, 0)] + [s for _, s in alive]
  np.testing.assert_allclose(
      scores[0], [table[0, EOS]] + [s for s, _ in alive], rtol=1e-5)
  assert np.isfinite(scores).all()


def test_toy_model_preferring_the_pad_id_never_emits_it():
  # Unmasked, "0 EOS" (.7) wins and prints as an empty string. Over the
  # tokens that can be emitted the first step is EOS 1/3, a 2/3.
  table = table_from_probs({
      (): {0: .7, EOS: .1, A: .2},
      (0,): {EOS: 1.0},
      (A,): {EOS: 1.0},
  }, max_len=2)
  seqs, scores = run_beam([table], beam_size=2, alpha=0.0, max_len=2)
  np.testing.assert_array_equal(seqs[0], [[A, EOS], [EOS, 0]])
  np.testing.assert_allclose(scores[0], np.log([2 / 3, 1 / 3]), rtol=1e-5)


@pytest.mark.parametrize('bos_id', [bs.PAD_ID, B])
@pytest.mark.parametrize('seed', range(3))
def test_pad_and_bos_ids_are_masked_at_every_step(bos_id, seed):
  # The model puts most of its mass on the pad id (and on bos where bos is a
  # word id) at every prefix; the search must return the brute-force best over
  # the other tokens, with the masked tokens' mass renormalised away.
  table = random_table(np.random.default_rng(seed), max_len=3)
  table[:, bs.PAD_ID] = 3.0
  table[:, bos_id] = 3.0
  words = tuple(w for w in (A, B) if w != bos_id)
  masked = table.copy()
  masked[:, [bs.PAD_ID, bos_id]] = -np.inf
  masked = masked - np.logaddexp.reduce(masked, axis=-1, keepdims=True)
  tokens_to_logits, cache = make_decoder(table[None], 2, max_len=3)
  seqs, scores = bs.beam_search(
      tokens_to_logits, cache, 1, beam_size=2, alpha=0.6, max_decode_len=3,
      eos_id=EOS, bos_id=bos_id)
  expected = brute_force(masked, 0.6, 3, words)[:2]

  seqs = np.asarray(seqs)
  assert [tuple(s) for s in seqs[0]] == [seq for _, seq in expected]
  np.testing.assert_allclose(scores[0], [s for s, _ in expected], rtol=1e-5)
  for seq in seqs[0]:
    emitted = seq[:list(seq).index(EOS) + 1]
    assert bs.PAD_ID not in emitted and bos_id not in emitted


def test_eos_that_could_never_be_emitted_is_refused():
  tokens_to_logits, cache = make_decoder(np.zeros((1, 21, VOCAB)), 2, 3)
  with pytest.raises(ValueError, match='eos_id 0 must differ'):
    bs.beam_search(tokens_to_logits, cache, 1, beam_size=2, alpha=0.0,
                   max_decode_len=3, eos_id=bs.PAD_ID)


def test_jit_matches_eager():
  rng = np.random.default_rng(11)
  tables = np.stack([random_table(rng, max_len=3) for _ in range(2)])
  search = functools.partial(bs.beam_search, beam_size=3, alpha=0.6,
                             max_decode_len=3, eos_id=EOS)

  @jax.jit
  def jitted(tables):
    tokens_to_logits, cache = make_decoder(tables, beam_size=3, max_len=3)
    return search(tokens_to_logits, cache, 2)

  tokens_to_logits, cache = make_decoder(tables, beam_size=3, max_len=3)
  eager_seqs, eager_scores = search(tokens_to_logits, cache, 2)
  jit_seqs, jit_scores = jitted(tables)
  np.testing.assert_array_equal(jit_seqs, eager_seqs)
  np.testing.assert_allclose(jit_scores, eager_scores, rtol=1e-6)
