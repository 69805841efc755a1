"""The training loop: train, evaluate, checkpoint, and report results."""

import functools
import math
import os
import resource

from absl import logging
import jax
import ml_collections
import numpy as np

from attention_jax import distributed
from attention_jax import progress
from attention_jax import run_records
from attention_jax import sharding
from attention_jax.train import averaging
from attention_jax.train import config_check
from attention_jax.train import flops
from attention_jax.train import optim
from attention_jax.train import preemption
from attention_jax.train import profiling
from attention_jax.train import run_config
from attention_jax.train import steps
from attention_jax.train import tasks
from attention_jax.train import train_state
from attention_jax.train import training_clock
from attention_jax.train import workdir_lock
from attention_jax.train.checkpoint import Checkpointer
from attention_jax.train.metrics_writer import MetricsWriter


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN or infinite loss."""


def _check_finite(step: int, metrics, checkpointer: Checkpointer) -> dict:
  metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
  if not math.isfinite(metrics['loss']):
    last = checkpointer.latest_step()
    where = checkpointer.path(last) if last is not None else 'none written'
    raise NonFiniteLossError(
        f'Loss became {metrics["loss"]} at step {step}; training stopped. '
        f'Last good checkpoint: {where}. Lower config.optimizer.learning_rate '
        'or raise config.optimizer.warmup_steps, then rerun to resume.'
    )
  return metrics


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str
) -> dict | None:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  SIGTERM (preemption) or SIGINT (Ctrl-C) stops training after the current
  step, with a checkpoint of it; rerunning the same command continues from
  there.

  Returns:
    The results also written to `workdir/results.json`, or None when
    preempted before the end.

  Raises:
    workdir_lock.WorkdirInUseError: when another live run uses `workdir`.
  """
  lock = f'.lock.process_{jax.process_index()}'
  with workdir_lock.hold(workdir, lock):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str
) -> dict | None:
  config_check.check_config(config)
  is_chief = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  checkpointer = Checkpointer(
      workdir, config.keep_checkpoints, remove_unfinished=True
  )
  if checkpointer.latest_step() is not None:
    run_config.check_resumable(config, workdir)
  with distributed.chief_first('prepare data'):
    task = tasks.for_config(
        config, workdir, resuming=checkpointer.latest_step() is not None)
  cfg = task.model_config
  train_model = task.model_class(cfg)
  eval_model = task.model_class(cfg.replace(deterministic=True))
  tx, schedule = optim.make_optimizer(config)
  mesh = sharding.make_mesh(config.mesh)
  state, state_shardings = train_state.create(
      train_model, tx, config.seed, mesh, config.data.max_len,
      sharding.logical_rules(config.mesh), task.num_inputs,
  )
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info('Model: %s parameters, %s', f'{num_params:,}', cfg)

  rows = sharding.process_rows(mesh, config.batch_size)
  logging.info(
      'Mesh %s; process %d loads rows %d:%d of each global batch of %d.',
      dict(mesh.shape), jax.process_index(), rows.start, rows.stop,
      config.batch_size,
  )
  stream = task.train_stream(config.batch_size, rows)
  # Seconds of training steps so far (training_clock.py).
  train_seconds, train_cpu_seconds = 0.0, 0.0
  restored = checkpointer.restore_latest(state, state_shardings)
  if restored is not None:
    latest, state, saved = restored
    stream.restore(saved['stream'])
    train_seconds = saved['train_seconds']
    # Checkpoints written before CPU time was counted lack it: unknown.
    train_cpu_seconds = saved.get('train_cpu_seconds')
    logging.info('Resumed from step %d (%s).', latest, checkpointer.path(latest))
  if is_chief:
    # Only once the checkpoint restored: a refused or failed resume leaves
    # the record of the run that wrote it.
    run_config.record(config, workdir)

  batch_sharding = sharding.batch_sharding(mesh)
  train_fn = jax.jit(
      functools.partial(
          steps.train_step,
          model=train_model,
          label_smoothing=config.label_smoothing,
          micro_batches=config.micro_batches,
          summed_loss=task.summed_loss,
      ),
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=0,
  )
  eval_fn = jax.jit(
      functools.partial(task.eval_step, model=eval_model),
      in_shardings=(state_shardings.params, batch_sharding),
      out_shardings=sharding.replicated(mesh),
  )
  task.prepare_eval(mesh, rows)
  writer = MetricsWriter(workdir, enabled=is_chief, start_step=int(state.step))

  first_batch = sharding.to_global(next(stream), mesh)
  # The step's matmul FLOPs with every loop (micro-batches, chunk loops)
  # times its trip count; XLA's cost analysis counts a loop body once, so its
  # count is used only where a loop's length is known at run time alone.
  step_flops = flops.traced_matmul_flops(train_fn, state, first_batch)
  train_fn = train_fn.lower(state, first_batch).compile()
  if step_flops is None:
    step_flops = flops.compiled_flops(train_fn)
    logging.info('The training step has a loop of run-time length: MFU from '
                 "XLA's count, which takes each loop body once (a lower "
                 'bound).')
  measured, best = flops.measure_and_record_peak(config.model.dtype)
  peak = flops.machine_peak(best)
  logging.info(
      'Devices: %d over %d process(es) on %s; %s matmul peak %.1f GFLOP/s '
      '(measured now %.1f per process on the %d CPU(s) it may use, the best '
      'known for this host and CPU count is used); %.2f GFLOP per training '
      'step.',
      jax.device_count(), jax.process_count(), jax.devices()[0].platform,
      config.model.dtype, peak / 1e9, measured / 1e9, flops.usable_cpus(),
      (step_flops or 0) / 1e9,
  )

  pending = None
  clock = training_clock.TrainingClock(train_seconds, train_cpu_seconds)
  interval_steps, interval_tokens = 0, 0.0
  batch = first_batch
  step = int(state.step)
  time_limit = config.max_train_seconds or math.inf
  preempted = False
  if is_chief and step < config.num_train_steps and clock.wall < time_limit:
    # Training goes past an earlier end: its results no longer describe the
    # latest checkpoint (and would mark a study point finished).
    run_records.remove(os.path.join(workdir, 'results.json'))
  with (preemption.PreemptionWatcher() as watcher,
        profiling.StepTracer(workdir, config.profile_steps, step) as tracer):
    while step < config.num_train_steps and clock.wall < time_limit:
      with tracer.step(step + 1):
        state, metrics = train_fn(state, batch)
      tracer.done(step + 1, (state, metrics))
      # The previous step's metrics are read only now, so the host never
      # waits for the device that is already running this step.
      if pending is not None:
        previous = _check_finite(*pending, checkpointer)
        interval_tokens += previous['target_tokens']
      step += 1
      interval_steps += 1
      pending = (step, metrics)
      out_of_time = clock.now()[0] >= time_limit
      preempted = watcher.should_stop(step)
      is_last = step == config.num_train_steps or out_of_time or preempted
      # Where a run resumed from this step's checkpoint must read on: the
      # stream's position before the next batch is prefetched.
      stream_position = stream.state()
      batch = None if is_last else sharding.to_global(next(stream), mesh)

      if step % config.log_every == 0 or is_last:
        last = _check_finite(*pending, checkpointer)
        pending = None
        interval_tokens += last['target_tokens']
        elapsed = clock.lap()
        step_time = elapsed / interval_steps
        scalars = {
            'train/loss': last['loss'],
            'train/nll': last['nll'],
            'train/accuracy': last['accuracy'],
            'train/grad_norm': last['grad_norm'],
            'train/learning_rate': optim.applied_learning_rate(
                schedule, step),
            'train/target_tokens_per_sec': interval_tokens / elapsed,
            'train/seconds': clock.wall,
        }
        if step_flops:
          scalars['train/mfu'] = step_flops / step_time / peak
        writer.write(step, scalars)
        steps_left_s = step_time * (config.num_train_steps - step)
        time_left_s = time_limit - clock.wall
        logging.info(
            'step %d/%d | loss %.3f | lr %.2e | %.0f tgt tok/s | MFU %s | '
            'ETA %s%s',
            step, config.num_train_steps, last['loss'],
            scalars['train/learning_rate'],
            scalars['train/target_tokens_per_sec'],
            f'{100 * scalars["train/mfu"]:.1f}%' if step_flops else 'n/a',
            progress.format_seconds(max(0.0, min(steps_left_s, time_left_s))),
            # Say which limit ends training when it is not the step count.
            ' (max_train_seconds)' if time_left_s < steps_left_s else '',
        )
        interval_steps, interval_tokens = 0, 0.0

      # Training time up to this step: the logged intervals and the one
      # under way (clock.wall alone lags by up to log_every steps).
      trained, trained_cpu = clock.now()
      if step % config.eval_every == 0 and not is_last:
        with clock.paused():
          scalars, line = task.valid_scores(eval_fn, state.params, trained)
          writer.write(step, {**scalars, 'train/seconds': trained})
          logging.info('step %d | %s', step, line)

      if step % config.checkpoint_every == 0 or is_last:
        if pending is not None:
          _check_finite(*pending, checkpointer)
        checkpointer.save(
            step, state,
            {'stream': stream_position, 'train_seconds': trained,
             'train_cpu_seconds': trained_cpu},
        )
      if out_of_time:
        logging.info(
            'Reached max_train_seconds=%d after step %d.', time_limit, step
        )
      if out_of_time or preempted:
        break

  if pending is not None:
    _check_finite(*pending, checkpointer)
  if checkpointer.latest_step() != step:
    checkpointer.save(
        step, state, {'stream': stream.state(), 'train_seconds': clock.wall,
                      'train_cpu_seconds': clock.cpu}
    )
  checkpointer.wait()
  if preempted:
    writer.close()
    checkpointer.close()
    logging.info(
        '%s at step %d; saved checkpoint %s. Rerun the same command to '
        'continue from it.', watcher.reason or 'Preempted (SIGTERM)', step,
        checkpointer.path(step),
    )
    return None
  params, averaged_steps = state.params, None
  if config.eval.average_checkpoints:
    averaged_steps, params = averaging.average_last(
        checkpointer, config.eval.average_checkpoints, state.params,
        state_shardings.params,
    )
  results = task.final_results(eval_fn, params, workdir)
  if averaged_steps is not None:
    results['averaged_checkpoint_steps'] = averaged_steps
  results.update(
      **_peak_memory(),
      num_params=num_params,
      steps=step,
      train_seconds=clock.wall,
      **({} if clock.cpu is None else {'train_cpu_seconds': clock.cpu}),
      train_tokens_per_sec=_mean_tokens_per_sec(workdir),
      config=config.to_dict(),
  )
  if is_chief:
    run_records.write_json(os.path.join(workdir, 'results.json'), results)
  writer.write(step, task.final_scalars(results))
  writer.close()
  checkpointer.close()
  logging.info('Done after %d steps: %s.', step, task.summary(results))
  return results


def _peak_memory() -> dict:
  """This process's peak memory: the devices' where they report it.

  Accelerators report peak bytes in use; the CPU backend does not, so there
  it is the process's peak resident set (parameters, activations, data and
  the Python runtime together).
  """
  peaks = [
      (d.memory_stats() or {}).get('peak_bytes_in_use')
      for d in jax.local_devices()
  ]
  if all(p is not None for p in peaks):
    return {'peak_memory_bytes': int(max(peaks)),
            'peak_memory_kind': 'device'}
  max_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return {'peak_memory_bytes': int(max_rss_kib) * 1024,
          'peak_memory_kind': 'host RSS'}


def _mean_tokens_per_sec(workdir: str) -> float | None:
  """Average training throughput over the logged intervals of this workdir.

  Each step counts once: where a workdir logged a step twice (a resume from
  an older checkpoint before metrics were trimmed on resume), the last wins.
  """
  rates = {
      r['step']: r['train/target_tokens_per_sec']
      for r in run_records.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
      if 'train/target_tokens_per_sec' in r
  }
  return float(np.mean(list(rates.values()))) if rates else None
