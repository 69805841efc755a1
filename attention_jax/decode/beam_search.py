"""Beam search over an incremental decoder, written as one `lax.while_loop`.

Beams are flattened into the batch dimension batch-major: row
`b * beam_size + k` of every per-beam array (decoder inputs, logits, cache
leaves) is beam `k` of batch element `b`. Per batch element the search keeps
`beam_size` alive hypotheses (raw log-probability sums) and `beam_size`
finished ones (ranked with the GNMT length penalty). The padding id and the bos
id are never emitted: they are not words, and a hypothesis made of them would
detokenise to an empty string.
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

# Fills the positions after EOS in returned sequences; never emitted.
PAD_ID = 0

Cache = Any
TokensToLogits = Callable[[jax.Array, Cache], tuple[jax.Array, Cache]]


class _BeamState(NamedTuple):
  """Loop carry; sequences hold the bos token at position 0."""

  step: jax.Array  # tokens generated so far
  alive_seqs_BxKxT: jax.Array
  alive_logp_BxK: jax.Array  # -inf marks a dead beam
  finished_seqs_BxKxT: jax.Array
  finished_scores_BxK: jax.Array  # -inf marks an empty slot
  cache: Cache


def expand_to_beams(tree: Any, beam_size: int) -> Any:
  """Repeats each array leaf's leading dim B -> B * beam_size, batch-major.

  Scalar leaves are returned as they are, matching how `beam_search` treats
  the cache.
  """
  return jax.tree.map(
      lambda x: jnp.repeat(x, beam_size, axis=0) if jnp.ndim(x) else x, tree)


def length_penalty(length: jax.Array, alpha: float) -> jax.Array:
  """GNMT length penalty ((5 + length) / 6) ** alpha (Wu et al., 2016)."""
  return ((5.0 + length) / 6.0)**alpha


def _gather_beams(x_BxMx_: jax.Array, idx_BxJ: jax.Array) -> jax.Array:
  """Picks beams `idx_BxJ` from the second axis of `x_BxMx_` per batch row."""
  rows_Bx1 = jnp.arange(x_BxMx_.shape[0])[:, None]
  return x_BxMx_[rows_Bx1, idx_BxJ]


def _reorder_cache(cache: Cache, parent_BxK: jax.Array) -> Cache:
  """Gathers per-beam cache leaves so beam k continues from beam parent[k]."""
  batch_size, beam_size = parent_BxK.shape
  flat_parent_N = (jnp.arange(batch_size)[:, None] * beam_size +
                   parent_BxK).reshape(-1)
  # Scalar leaves (such as a shared decode index) are the same for every beam.
  return jax.tree.map(lambda x: x[flat_parent_N] if x.ndim else x, cache)


def _init_state(init_cache: Cache, batch_size: int, beam_size: int,
                max_decode_len: int, bos_id: int) -> _BeamState:
  seqs_BxKxT = jnp.full((batch_size, beam_size, max_decode_len + 1),
                        PAD_ID, jnp.int32).at[:, :, 0].set(bos_id)
  # All beams start from the same bos prefix; keeping only the first one live
  # stops step 0 from filling the beam with copies of one hypothesis.
  first_live_K = jnp.full((beam_size,), -jnp.inf).at[0].set(0.0)
  return _BeamState(
      step=jnp.array(0, jnp.int32),
      alive_seqs_BxKxT=seqs_BxKxT,
      alive_logp_BxK=jnp.tile(first_live_K, (batch_size, 1)),
      finished_seqs_BxKxT=seqs_BxKxT,
      finished_scores_BxK=jnp.full((batch_size, beam_size), -jnp.inf),
      cache=init_cache)


def _should_continue(state: _BeamState, *, alpha: float,
                     max_decode_len: int) -> jax.Array:
  """False once every row's worst finished score beats all alive beams."""
  # Log-probs only fall as tokens are added and, for alpha >= 0, the largest
  # penalty divides a negative score the most, so this bounds what the best
  # alive beam can still reach.
  best_reachable_B = (state.alive_logp_BxK[:, 0] /
                      length_penalty(max_decode_len, alpha))
  worst_finished_B = state.finished_scores_BxK[:, -1]
  undecided = jnp.any(best_reachable_B > worst_finished_B)
  return (state.step < max_decode_len) & undecided


def _step(state: _BeamState, *, tokens_to_logits: TokensToLogits,
          alpha: float, eos_id: int, bos_id: int) -> _BeamState:
  """Extends every alive beam by one token and updates both beam sets."""
  batch_size, beam_size, _ = state.alive_seqs_BxKxT.shape
  last_tokens_N = state.alive_seqs_BxKxT[:, :, state.step].reshape(-1)
  logits_NxV, cache = tokens_to_logits(last_tokens_N, state.cache)
  vocab_size = logits_NxV.shape[-1]
  # Masked before the softmax: scores are log-probabilities over the tokens
  # that can be emitted.
  logits_NxV = logits_NxV.astype(jnp.float32).at[:, PAD_ID].set(-jnp.inf)
  logits_NxV = logits_NxV.at[:, bos_id].set(-jnp.inf)
  logp_BxKxV = jax.nn.log_softmax(logits_NxV).reshape(
      batch_size, beam_size, vocab_size)
  cand_logp_BxKV = (state.alive_logp_BxK[:, :, None] + logp_BxKxV).reshape(
      batch_size, beam_size * vocab_size)

  # Each alive beam has a single EOS extension, so the best 2K candidates
  # always contain K that can stay alive.
  top_logp_Bx2K, top_idx_Bx2K = jax.lax.top_k(cand_logp_BxKV, 2 * beam_size)
  parent_Bx2K = top_idx_Bx2K // vocab_size
  token_Bx2K = top_idx_Bx2K % vocab_size
  top_seqs_Bx2KxT = _gather_beams(state.alive_seqs_BxKxT, parent_Bx2K)
  top_seqs_Bx2KxT = top_seqs_Bx2KxT.at[:, :, state.step + 1].set(token_Bx2K)
  is_eos_Bx2K = token_Bx2K == eos_id

  alive_logp_BxK, alive_pick_BxK = jax.lax.top_k(
      jnp.where(is_eos_Bx2K, -jnp.inf, top_logp_Bx2K), beam_size)
  alive_parent_BxK = jnp.take_along_axis(parent_Bx2K, alive_pick_BxK, axis=1)

  new_scores_Bx2K = jnp.where(
      is_eos_Bx2K, top_logp_Bx2K / length_penalty(state.step + 1, alpha),
      -jnp.inf)
  finished_scores_BxK, finished_pick_BxK = jax.lax.top_k(
      jnp.concatenate([state.finished_scores_BxK, new_scores_Bx2K], axis=1),
      beam_size)
  finished_pool_Bx3KxT = jnp.concatenate(
      [state.finished_seqs_BxKxT, top_seqs_Bx2KxT], axis=1)

  return _BeamState(
      step=state.step + 1,
      alive_seqs_BxKxT=_gather_beams(top_seqs_Bx2KxT, alive_pick_BxK),
      alive_logp_BxK=alive_logp_BxK,
      finished_seqs_BxKxT=_gather_beams(finished_pool_Bx3KxT,
                                        finished_pick_BxK),
      finished_scores_BxK=finished_scores_BxK,
      cache=_reorder_cache(cache, alive_parent_BxK))


def beam_search(tokens_to_logits: TokensToLogits,
                init_cache: Cache,
                batch_size: int,
                *,
                beam_size: int,
                alpha: float,
                max_decode_len: int,
                eos_id: int,
                bos_id: int = 0) -> tuple[jax.Array, jax.Array]:
  """Finds high-scoring sequences under an incremental decoder.

  Args:
    tokens_to_logits: `(last_tokens_N, cache) -> (logits_NxV, new_cache)`, with
      N = batch_size * beam_size batch-major. Called once per step with the
      token emitted at the previous step (bos_id at step 0). `new_cache` must
      have the structure, shapes and dtypes of `cache`.
    init_cache: pytree of decoder state. Leaves with ndim >= 1 have leading
      dim N (see `expand_to_beams`) and are gathered along it at every step,
      as beams are reselected; scalar leaves are shared by all beams and
      never gathered. State that is the same for every beam of a sentence
      (the encoder memory) belongs in `tokens_to_logits`' closure instead:
      gathering it would copy it unchanged at every step.
    batch_size: B, the number of source sentences.
    beam_size: K, hypotheses kept per sentence.
    alpha: GNMT length-penalty exponent; must be >= 0 for early stopping to be
      exact.
    max_decode_len: T, the most tokens generated per hypothesis, EOS included.
    eos_id: token that ends a hypothesis.
    bos_id: token fed to the decoder at step 0. Neither it nor `PAD_ID` is
      ever emitted: their logits are masked at every step.

  Returns:
    `(sequences_BxKxT, scores_BxK)`: K hypotheses per row. The finished ones
    (ending in EOS) come first, best first; where fewer than K finished, the
    best alive beams (T tokens, no EOS) fill the remaining slots. Sequences
    exclude bos and are padded with `PAD_ID` after EOS. Every score is the
    hypothesis' log-probability sum divided by `length_penalty` of its length
    (EOS included). A slot scores -inf only where the search found fewer than
    K hypotheses of non-zero probability (a vocabulary of a few tokens, or a
    model that gives most tokens zero probability).
  """
  if alpha < 0:
    raise ValueError(f'alpha must be >= 0 for early stopping, got {alpha}.')
  if eos_id in (PAD_ID, bos_id):
    raise ValueError(
        f'eos_id {eos_id} must differ from the padding id {PAD_ID} and '
        f'bos_id {bos_id}, which are never emitted.'
    )
  final = jax.lax.while_loop(
      functools.partial(_should_continue, alpha=alpha,
                        max_decode_len=max_decode_len),
      functools.partial(_step, tokens_to_logits=tokens_to_logits, alpha=alpha,
                        eos_id=eos_id, bos_id=bos_id),
      _init_state(init_cache, batch_size, beam_size, max_decode_len, bos_id))
  return _n_best(final, alpha)


def _n_best(final: _BeamState,
            alpha: float) -> tuple[jax.Array, jax.Array]:
  """Finished hypotheses first, then alive beams in the slots left over."""
  beam_size = final.finished_scores_BxK.shape[1]
  # A row with fewer than K finished keeps the search going while it has a
  # live beam, so alive beams that fill in all have `final.step` tokens.
  pool_seqs_Bx2KxT = jnp.concatenate(
      [final.finished_seqs_BxKxT, final.alive_seqs_BxKxT], axis=1)
  pool_scores_Bx2K = jnp.concatenate(
      [final.finished_scores_BxK,
       final.alive_logp_BxK / length_penalty(final.step, alpha)],
      axis=1)
  num_finished_Bx1 = jnp.sum(
      jnp.isfinite(final.finished_scores_BxK), axis=1, keepdims=True)
  slot_1xK = jnp.arange(beam_size)[None]
  # Finished slots are sorted with the empty (-inf) ones last, alive beams
  # best first, so slot j takes finished j or the (j - finished)-th alive.
  pick_BxK = jnp.where(slot_1xK < num_finished_Bx1, slot_1xK,
                       beam_size + slot_1xK - num_finished_Bx1)
  seqs_BxKxT = _gather_beams(pool_seqs_Bx2KxT, pick_BxK)
  scores_BxK = jnp.take_along_axis(pool_scores_Bx2K, pick_BxK, axis=1)
  return seqs_BxKxT[:, :, 1:], scores_BxK
