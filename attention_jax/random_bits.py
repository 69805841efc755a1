"""Dropout's random bits on the CPU: Threefry lowered without a loop.

JAX lowers its Threefry-2x32 hash (Salmon et al., 2011, "Parallel random
numbers: as easy as 1, 2, 3"; 20 rounds) to a `while` loop of five
iterations on the CPU, to keep compile times short, and to straight-line
code on every other backend. On XLA:CPU the loop costs far more than the
hash: each iteration reads and writes the whole counter array, so a
[32, 64, 1024] dropout mask took 36 ms rolled against 10 ms unrolled, and
dropout's masks were 15% of a `bible` training step. `unroll_threefry_on_cpu`
registers JAX's own straight-line lowering for the CPU as well: the same
function of the same inputs, so every random bit, dropout mask and loss is
unchanged (tests/test_random_bits.py checks the published known answers and
the bits of the rolled form); compiling a training step takes a little
longer.

This uses JAX internals (`jax._src`), so where they are missing (another JAX
version) it logs a warning and leaves the lowering as it is.
"""

from absl import logging

_registered = False


def unroll_threefry_on_cpu() -> bool:
  """Makes XLA:CPU compile Threefry-2x32 as straight-line code.

  Idempotent; affects programs lowered afterwards, on the CPU only.

  Returns:
    True if the unrolled lowering is in place, False if this JAX version
    lacks the internals it uses (nothing is changed then).
  """
  global _registered
  if _registered:
    return True
  try:
    # pylint: disable=g-import-not-at-top
    from jax._src.interpreters import mlir
    from jax._src.random import threefry2x32
    primitive = threefry2x32.threefry2x32_p
    unrolled = threefry2x32._threefry2x32_lowering_rule  # pylint: disable=protected-access
  except (ImportError, AttributeError) as e:
    logging.warning(
        'Threefry stays a loop on the CPU (JAX internals not found: %s); '
        'dropout is slower there, results are the same.', e)
    return False
  mlir.register_lowering(primitive, unrolled, platform='cpu')
  _registered = True
  return True
