"""Associative recall: multi-query (MQAR) and noisy in-context recall.

Token 0 is padding and never occurs in a sequence. Both tasks bind keys to
values in context and then query keys again; the answer to a query is the
value bound to its key, predicted at the query's own position (the next
token a causal model would emit). Every example is a triple of [L] arrays:
`tokens` (int32), `targets` (int32, 0 where nothing is asked) and `weights`
(float32, 1 at the answer positions).

Multi-query associative recall (Arora et al., 2023, "Zoology: Measuring and
Improving Recall in Efficient Language Models", sec. 3): the sequence opens
with D key-value pairs `k1 v1 ... kD vD` (distinct keys from the lower half
of the vocabulary, values from the upper half), followed by a region that
holds Q of the keys again, in random order at random positions; the other
positions of that region are filler. Zoology draws filler tokens at random;
here they are drawn from the value half, so that every key after the
context is a query and the answers follow from the sequence alone.

Noisy in-context recall (Poli et al., 2024, "Mechanistic Design and Scaling
of Hybrid Architectures", sec. 3 and appendix, the MAD suite): the same D
pairs and Q queries, with tokens of a separate noise vocabulary inserted at
random places between pairs and queries (never inside a pair), so the model
must skip noise both when it binds and when it recalls.
"""

import numpy as np

# Token ids below this serve as noise in noisy recall (1, ..., 7).
NOISE_END = 8


def _pairs(rng: np.random.Generator, first_key: int, vocab_size: int,
           num_pairs: int) -> tuple[np.ndarray, np.ndarray]:
  """D distinct keys from [first_key, middle) and values from [middle, V)."""
  middle = first_key + (vocab_size - first_key) // 2
  if num_pairs > middle - first_key:
    raise ValueError(
        f'{num_pairs} pairs need {num_pairs} distinct keys, but a vocabulary '
        f'of {vocab_size} has only {middle - first_key}; raise '
        'config.data.vocab_size or lower config.data.num_items.')
  keys = rng.choice(np.arange(first_key, middle), num_pairs, replace=False)
  values = rng.integers(middle, vocab_size, num_pairs)
  return keys, values


def _queries(rng, num_pairs: int, num_queries: int) -> np.ndarray:
  """Indices of the queried pairs: Q distinct pairs in random order."""
  if not 0 < num_queries <= num_pairs:
    raise ValueError(
        f'num_queries={num_queries} must lie in 1..{num_pairs} (the pairs).')
  return rng.choice(num_pairs, num_queries, replace=False)


def mqar(rng: np.random.Generator, vocab_size: int, length: int,
         num_pairs: int, num_queries: int):
  """One MQAR example of `length` tokens; see the module docstring.

  Args:
    rng: the source of randomness.
    vocab_size: V; keys come from [1, V/2), values from [V/2, V).
    length: L, context plus query region.
    num_pairs: D key-value pairs in the context.
    num_queries: Q <= D keys queried.

  Returns:
    (tokens, targets, weights), each of shape [L].

  Raises:
    ValueError: when the pairs need more keys than the vocabulary has, or
      the context and queries do not fit in `length`.
  """
  keys, values = _pairs(rng, 1, vocab_size, num_pairs)
  region = length - 2 * num_pairs
  if num_queries > region:
    raise ValueError(
        f'{num_pairs} pairs and {num_queries} queries do not fit in '
        f'{length} tokens.')
  asked = _queries(rng, num_pairs, num_queries)
  middle = 1 + (vocab_size - 1) // 2
  tokens = np.empty(length, np.int32)
  tokens[0:2 * num_pairs:2] = keys
  tokens[1:2 * num_pairs:2] = values
  tokens[2 * num_pairs:] = rng.integers(middle, vocab_size, region)
  places = 2 * num_pairs + np.sort(rng.choice(region, num_queries,
                                              replace=False))
  tokens[places] = keys[asked]
  targets = np.zeros(length, np.int32)
  targets[places] = values[asked]
  return tokens, targets, (targets > 0).astype(np.float32)


def noisy_recall(rng: np.random.Generator, vocab_size: int, length: int,
                 num_pairs: int, num_queries: int):
  """One noisy in-context recall example; see the module docstring.

  Args:
    rng: the source of randomness.
    vocab_size: V; tokens 1..7 are noise, keys and values split the rest.
    length: L; the tokens not in pairs or queries are noise.
    num_pairs: D key-value pairs.
    num_queries: Q <= D keys queried after all pairs.

  Returns:
    (tokens, targets, weights), each of shape [L].

  Raises:
    ValueError: as `mqar`.
  """
  keys, values = _pairs(rng, NOISE_END, vocab_size, num_pairs)
  asked = _queries(rng, num_pairs, num_queries)
  units = [[k, v] for k, v in zip(keys, values)] + [[k] for k in keys[asked]]
  answers = [0] * num_pairs + list(values[asked])
  num_noise = length - 2 * num_pairs - num_queries
  if num_noise < 0:
    raise ValueError(
        f'{num_pairs} pairs and {num_queries} queries do not fit in '
        f'{length} tokens.')
  # Which of the len(units) + num_noise slots hold noise; units keep order.
  is_noise = np.zeros(len(units) + num_noise, bool)
  is_noise[rng.choice(is_noise.size, num_noise, replace=False)] = True
  noise = iter(rng.integers(1, NOISE_END, num_noise))
  unit = iter(zip(units, answers))
  tokens, targets = [], []
  for slot_is_noise in is_noise:
    if slot_is_noise:
      tokens.append(next(noise))
      targets.append(0)
    else:
      pieces, answer = next(unit)
      tokens += pieces
      targets += [answer] + [0] * (len(pieces) - 1)
  targets = np.array(targets, np.int32)
  return (np.array(tokens, np.int32), targets,
          (targets > 0).astype(np.float32))


def solve(tokens: np.ndarray, first_key: int, first_value: int):
  """Answers of a recall sequence, by reading it left to right.

  A key's first occurrence binds it to the token after it; each later
  occurrence is a query, answered with the bound value. Noise and filler
  tokens (outside [first_key, first_value)) are skipped.

  Args:
    tokens: [L] int tokens.
    first_key: the smallest key token (1 in MQAR, NOISE_END in noisy recall).
    first_value: the smallest value token; keys lie below it.

  Returns:
    (targets, weights) as the generators return them.
  """
  bound = {}
  targets = np.zeros(len(tokens), np.int32)
  for t, token in enumerate(tokens):
    if not first_key <= token < first_value:
      continue
    if token in bound:
      targets[t] = bound[token]
    else:
      bound[token] = tokens[t + 1]
  return targets, (targets > 0).astype(np.float32)
