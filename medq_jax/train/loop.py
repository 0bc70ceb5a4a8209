"""The training loop: sharded init (optionally from pretrained files), AOT-compiled train step,
Grain batches, Orbax checkpoints (train state + data iterator, verified by checksums on resume),
metrics (stdout, metrics.jsonl, TensorBoard) with per-device TFLOP/s and MFU, non-finite steps
skipped and counted, and an optional profiler window.

The loop does no launch work: the entry point (`launch/train.py`) prepares the dataset and the
tokenizer first (`launch/prepare.py`). One call trains one stage; `pipeline.py` chains stages."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from collections.abc import Callable

import jax

from data_pipeline.loader import SkipLimitError
from medq_jax import checkpoints, packing
from medq_jax import sharding as sharding_lib
from medq_jax.models.medq_uni import param_count
from medq_jax.train import checkpoint as checkpoint_lib
from medq_jax.train import config_checks, pretrained, profiling, run_record
from medq_jax.train import data as data_lib
from medq_jax.train import state as state_lib
from medq_jax.train import step as step_lib
from medq_jax.train.metrics_writer import MetricsWriter


def _log_memory(compiled) -> None:
  try:
    memory = compiled.memory_analysis()
  except Exception:  # not every backend reports it
    return
  if memory is not None:
    logging.info(
      "train step memory: args %.1f MiB, temps %.1f MiB, output %.1f MiB",
      memory.argument_size_in_bytes / 2**20,
      memory.temp_size_in_bytes / 2**20,
      memory.output_size_in_bytes / 2**20,
    )


class NonFiniteError(FloatingPointError):
  """`train.max_consecutive_nonfinite` steps in a row had a non-finite loss or gradient."""


class _NonFiniteCounter:
  """Counts the steps whose update was skipped (`nonfinite` from the jitted step) and stops
  the run after `limit` in a row. Flags are read one step late, so one step stays queued."""

  def __init__(self, limit: int, latest_checkpoint: Callable[[], int | None]):
    self.limit, self.latest_checkpoint = limit, latest_checkpoint
    self.streak = self.total = 0
    self._pending = None  # (step, flag on device)

  def push(self, step: int, flag) -> None:
    """Accounts the previous step (its result is due) and queues this one's flag."""
    self.flush()
    self._pending = (step, flag)

  def flush(self) -> None:
    """Accounts the queued step (blocks on it)."""
    if self._pending is None:
      return
    step, flag = self._pending
    self._pending = None
    if not float(jax.device_get(flag)):
      self.streak = 0
      return
    self.streak += 1
    self.total += 1
    logging.warning(
      "step %d: non-finite loss or gradient norm; its update was skipped (%d in a row, %d in "
      "total)",
      step,
      self.streak,
      self.total,
    )
    if self.streak >= self.limit:
      raise NonFiniteError(
        f"stopping at step {step}: {self.streak} consecutive steps had a non-finite loss or "
        f"gradient norm (train.max_consecutive_nonfinite={self.limit}); parameters are those of "
        f"step {step - self.streak}, the last good checkpoint is step "
        f"{self.latest_checkpoint()}; lower train.learning_rate or check the data"
      )


# The faults that stop a run with one message (the entry point prints it as one line).
STOP_ERRORS = (
  config_checks.ConfigError,
  checkpoints.CheckpointError,
  run_record.RunRecordError,
  NonFiniteError,
  SkipLimitError,
)


def train(
  config,
  workdir: str,
  tokenizer_dir: str,
  report: Callable[[int, dict], None] | None = None,
) -> dict:
  """Trains per `config` in `workdir` on the precomputed `config.data` with the tokenizer in
  `tokenizer_dir` (both prepared by the entry point: `launch/prepare.py`); resumes from the
  latest good checkpoint there. `report(step, metrics)` is called at every logged step
  (process 0). Returns the last step's metrics (floats).

  Config and shape problems raise `config_checks.ConfigError` before anything is built;
  `train.max_consecutive_nonfinite` skipped steps in a row raise `NonFiniteError`."""
  os.makedirs(workdir, exist_ok=True)
  resuming = config_checks.check_training(config, workdir)
  directory = checkpoints.checkpoint_dir(workdir)
  config = run_record.settle(config, workdir, resuming=resuming)
  # Separate streams: initialisation and the loop's per-step noise never share a key.
  init_rng, loop_rng = jax.random.split(jax.random.key(config.train.seed))
  # A resume restores the whole state from the run's checkpoint: the model's parameters are
  # then only shapes (no random init compiled and run, no init.* weights read and discarded,
  # no second copy of the state in memory while restoring); the frozen VAE is loaded as before.
  setup = state_lib.build_setup(config, init_rng, model_params=not resuming)
  spec, mesh, optimizer = setup.spec, setup.mesh, setup.optimizer
  if resuming:
    params = setup.params
    vae_params = pretrained.load_frozen_vae(config.init, config.model, setup.vae_params)
  else:
    params, vae_params = pretrained.load_initial_weights(
      config.init, config.model, setup.params, setup.vae_params, mesh, config.sharding_rules
    )
  logging.info(
    "MedQUni parameters: %.2fM (VAE %.2fM), mesh %s",
    param_count(params) / 1e6,
    param_count(vae_params) / 1e6,
    dict(mesh.shape),
  )
  ema_decay = float(config.train.get("ema_decay", 0.0))
  state = state_lib.init_train_state(params, optimizer, mesh, ema_decay)
  state_shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
  step_fn = step_lib.make_train_step(setup.model, setup.vae, optimizer, config.model, config.train)

  iterator = data_lib.make_train_iterator(config, tokenizer_dir, spec)
  manager = checkpoint_lib.make_manager(directory, save_every=config.train.checkpoint_every)
  restored, start_step = checkpoint_lib.restore_latest(
    manager, checkpoint_lib.abstract_like(state), iterator
  )
  if restored is not None:
    state = restored
    logging.info("resumed from step %d", start_step)
  elif resuming:
    manager.close()
    raise checkpoints.CheckpointError(f"{directory}: its steps disappeared while resuming")
  if start_step >= config.train.steps:
    logging.info(
      "nothing to do: the checkpoint is at step %d >= train.steps=%d (raise "
      "--config.train.steps to continue)",
      start_step,
      config.train.steps,
    )
    manager.close()
    return {"step": start_step}

  first = data_lib.as_numpy_batch(next(iterator))
  # examples since the last log: counted on this process's rows (packed rows hold several),
  # times the process count (every process loads an equal share of the global batch)
  examples_since_log = 0
  global_first = sharding_lib.global_batch(first, mesh)
  # The model FLOPs for TFLOP/s and MFU are traced and lowered in a second thread while XLA
  # compiles the step: the compile runs outside the GIL, so the count costs no wall time of
  # its own (it had been 4 s of a 21 s tiny run, more for deep models; profiling.step_flops).
  with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="step-flops") as pool:
    flops_future = pool.submit(profiling.step_flops, config, global_first, mesh)
    with sharding_lib.mesh_context(mesh, config.sharding_rules):
      jitted = jax.jit(
        step_fn,
        in_shardings=(state_shardings, setup.vae_shardings, None, None),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
      )
      start = time.perf_counter()
      compiled = jitted.lower(state, vae_params, global_first, loop_rng).compile()
      logging.info("train step compiled in %.1fs", time.perf_counter() - start)
    # Per device: the unrolled step's count (a scanned step's own analysis counts one layer).
    flops = flops_future.result() / mesh.devices.size
  _log_memory(compiled)

  writer = MetricsWriter(workdir, config.train.tensorboard, resume_step=start_step)
  nonfinite = _NonFiniteCounter(
    int(config.train.get("max_consecutive_nonfinite", 10)), manager.latest_step
  )
  profile_start, profile_stop = config.train.profile_steps
  peak = config.train.peak_tflops_per_device * 1e12
  last = {}
  batch, host_batch = global_first, first
  # Steps are dispatched asynchronously: timings are wall time between logged steps (results
  # blocked on) divided by the steps in between, the true mean per step including data waits.
  logged_time, logged_step = time.perf_counter(), start_step
  try:
    for step in range(start_step, config.train.steps):
      done = step + 1
      if step == profile_start and profile_stop > profile_start:
        jax.profiler.start_trace(os.path.join(workdir, "profile"))
      examples_since_log += packing.examples_in_batch(host_batch) * jax.process_count()
      state, metrics = compiled(state, vae_params, batch, loop_rng)
      nonfinite.push(done, metrics["nonfinite"])
      final = done == config.train.steps
      saving = final or manager.should_save(done)
      logging_step = done % config.train.log_every == 0 or final
      if saving or logging_step:
        nonfinite.flush()
      if logging_step:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        seconds = (now - logged_time) / (done - logged_step)
        metrics.update(
          step_seconds=seconds,
          examples_per_second=examples_since_log / (seconds * (done - logged_step)),
          tflops_per_second_per_device=flops / seconds / 1e12,
          nonfinite_steps=float(nonfinite.total),
        )
        logged_time, logged_step, examples_since_log = now, done, 0
        if peak:
          metrics["mfu"] = flops / seconds / peak
        writer.write(done, metrics)
        if report is not None and jax.process_index() == 0:
          report(done, metrics)
        last = dict(metrics, step=done)
      if done == profile_stop and profile_stop > profile_start:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
      if saving:
        if nonfinite.streak:  # the state is the last good one; keep the last good checkpoint
          logging.warning("step %d: not checkpointed (its update was skipped)", done)
        else:
          checkpoint_lib.save(manager, done, state, iterator, force=final)
      if not final:
        host_batch = data_lib.as_numpy_batch(next(iterator))
        batch = sharding_lib.global_batch(host_batch, mesh)
    nonfinite.flush()
  finally:
    writer.close()
    manager.wait_until_finished()
    manager.close()
  return last
