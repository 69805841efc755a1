"""One tiny training run that profiles steps and evaluates averaged params."""

import glob
import json
import os

import jax
import jax.numpy as jnp
import pytest

from attention_jax.train import profiling
from attention_jax.train import trainer
from experiments.configs import smoke


def test_run_writes_a_profile_and_records_the_averaged_steps(
    data_dir, tmp_path
):
  config = smoke.get_config()
  config.data.data_dir = data_dir
  config.num_train_steps = 6
  config.checkpoint_every = 3
  config.log_every = 3
  config.eval_every = 100
  config.eval.valid_bleu = False
  config.eval.final_sentences = 8
  config.profile_steps = 2
  config.eval.average_checkpoints = 2
  workdir = str(tmp_path)
  results = trainer.train_and_evaluate(config, workdir)

  traces = glob.glob(os.path.join(
      workdir, 'profile', 'process_0', 'plugins', 'profile', '*', '*.xplane.pb'))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0, traces
  assert results['averaged_checkpoint_steps'] == [3, 6]
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['averaged_checkpoint_steps'] == [3, 6]


def test_trace_is_stopped_when_training_fails(tmp_path):
  double = jax.jit(lambda x: 2 * x)
  with pytest.raises(RuntimeError, match='failed at step 2'):
    with profiling.StepTracer(str(tmp_path), 5, first_step=0) as tracer:
      for step in (1, 2):
        with tracer.step(step):
          double(jnp.ones(4)).block_until_ready()
      raise RuntimeError('failed at step 2')
  assert glob.glob(
      str(tmp_path / 'profile/process_0/plugins/profile/*/*.xplane.pb'))
  # Stopped: a new trace can start.
  jax.profiler.start_trace(str(tmp_path / 'again'))
  jax.profiler.stop_trace()
