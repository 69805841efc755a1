"""Selective copying (Poli et al., 2024, "Mechanistic Design and Scaling of
Hybrid Architectures", sec. 3 and appendix, the MAD suite).

C content tokens lie scattered, in order, among blank tokens; a separator
follows, and the model must then emit the content tokens in their order,
ignoring the blanks. Teacher-forced: at the separator it predicts the first
content token, at the i-th copied token the (i+1)-th. The sequence is
`region (L - 1 - C tokens) SEP c1 ... cC`, so the last copied token asks for
nothing. Token 0 is padding, 1 the blank, 2 the separator, 3..V-1 content.
"""

import numpy as np

BLANK = 1
SEPARATOR = 2
FIRST_CONTENT = 3


def generate(rng: np.random.Generator, vocab_size: int, length: int,
             num_tokens: int, num_queries: int = 0):
  """One selective-copying example of `length` tokens.

  Args:
    rng: the source of randomness.
    vocab_size: V; content tokens are drawn from [3, V) with replacement.
    length: L in total, including the separator and the copy.
    num_tokens: C content tokens to copy.
    num_queries: unused (the recall tasks' parameter); every content token
      is asked for.

  Returns:
    (tokens, targets, weights), each of shape [L]: int32, int32 (0 where
    nothing is asked), float32 (1 at the C answer positions).

  Raises:
    ValueError: when C tokens, the separator and the copy exceed `length`.
  """
  del num_queries
  region = length - 1 - num_tokens
  if num_tokens > region:
    raise ValueError(
        f'{num_tokens} tokens to copy need at least {2 * num_tokens + 1} '
        f'tokens of sequence, not {length}.')
  content = rng.integers(FIRST_CONTENT, vocab_size, num_tokens)
  tokens = np.full(length, BLANK, np.int32)
  places = np.sort(rng.choice(region, num_tokens, replace=False))
  tokens[places] = content
  tokens[region] = SEPARATOR
  tokens[region + 1:] = content
  targets = np.zeros(length, np.int32)
  targets[region:region + num_tokens] = content
  return tokens, targets, (targets > 0).astype(np.float32)


def solve(tokens: np.ndarray):
  """Answers of a selective-copying sequence, from its tokens alone.

  Returns:
    (targets, weights) as `generate` returns them: the non-blank tokens
    before the separator, asked for from the separator on.
  """
  separator = int(np.flatnonzero(tokens == SEPARATOR)[0])
  content = [t for t in tokens[:separator] if t >= FIRST_CONTENT]
  targets = np.zeros(len(tokens), np.int32)
  targets[separator:separator + len(content)] = content
  return targets, (targets > 0).astype(np.float32)
