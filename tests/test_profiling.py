"""Where a traced program's time went, by XLA operation."""

import jax
import jax.numpy as jnp
import pytest

from attention_jax.train import profiling


def test_op_seconds_of_a_traced_program(tmp_path):
  step = jax.jit(lambda a, b: jnp.tanh(a @ b).sum())
  a = jnp.ones((256, 256))
  step(a, a).block_until_ready()
  with jax.profiler.trace(str(tmp_path)):
    for _ in range(2):
      step(a, a).block_until_ready()
  seconds = profiling.xla_op_seconds(str(tmp_path))
  assert seconds and all(value > 0 for value in seconds.values())
  assert list(seconds.values()) == sorted(seconds.values(), reverse=True)
  # Only the named programs count.
  assert profiling.xla_op_seconds(str(tmp_path), 'jit_no_such_program') == {}


def test_no_trace_is_an_error_naming_the_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    profiling.xla_op_seconds(str(tmp_path))
