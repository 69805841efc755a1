"""The straight-line Threefry lowering on the CPU computes the same bits."""

import functools

import jax
from jax._src.random import threefry2x32
import numpy as np

from attention_jax import random_bits


def test_unrolled_lowering_is_registered_and_compiles_without_a_loop():
  assert random_bits.unroll_threefry_on_cpu()
  hlo = jax.jit(lambda k: jax.random.bits(k, (64, 64))).lower(
      jax.random.key(0)).compile().as_text()
  assert 'while' not in hlo


def test_known_answers_of_threefry_2x32_20():
  """Known-answer vectors of Random123 (Salmon et al., 2011), kat_vectors."""
  random_bits.unroll_threefry_on_cpu()
  cases = [
      ((0x00000000, 0x00000000), (0x00000000, 0x00000000),
       (0x6b200159, 0x99ba4efe)),
      ((0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff),
       (0x1cb996fc, 0xbb002be7)),
      ((0x13198a2e, 0x03707344), (0x243f6a88, 0x85a308d3),
       (0xc4923a9c, 0x483df7a0)),
  ]
  hash_fn = jax.jit(threefry2x32.threefry_2x32)
  for key, count, expected in cases:
    out = hash_fn(np.uint32(key), np.uint32(count))
    assert [int(x) for x in out] == list(expected)


def test_bits_equal_those_of_the_rolled_loop():
  random_bits.unroll_threefry_on_cpu()
  rng = np.random.default_rng(0)
  k1, k2 = (np.uint32(x) for x in rng.integers(0, 2**32, 2))
  x1, x2 = (rng.integers(0, 2**32, (3, 1000)).astype(np.uint32)
            for _ in range(2))
  unrolled = jax.jit(threefry2x32.threefry2x32_p.bind)(k1, k2, x1, x2)
  rolled = jax.jit(functools.partial(
      threefry2x32._threefry2x32_lowering, use_rolled_loops=True))(  # pylint: disable=protected-access
          k1, k2, x1, x2)
  for a, b in zip(unrolled, rolled):
    np.testing.assert_array_equal(a, b)
