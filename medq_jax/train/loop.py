"""The training loop: sharded init (optionally from pretrained files), AOT-compiled train step,
Grain batches, Orbax checkpoints (train state + data iterator), metrics (stdout, metrics.jsonl,
TensorBoard) with per-device TFLOP/s and MFU, and an optional profiler window.

The loop does no launch work: the entry point (`launch/train.py`) prepares the dataset and the
tokenizer first (`launch/prepare.py`). One call trains one stage; `pipeline.py` chains stages."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import jax
import numpy as np

from medq_jax import checkpoints
from medq_jax import sharding as sharding_lib
from medq_jax.models.medq_uni import param_count
from medq_jax.train import checkpoint as checkpoint_lib
from medq_jax.train import data as data_lib
from medq_jax.train import pretrained
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


def _step_flops(compiled) -> float:
  """FLOPs of one step per device, from XLA's cost analysis (0 when unavailable)."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # not every backend implements it
    return 0.0
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", 0.0))


def train(
  config,
  workdir: str,
  tokenizer_dir: str,
  report: Callable[[int, dict], None] | None = None,
) -> dict:
  """Trains per `config` in `workdir` on the precomputed `config.data` with the tokenizer in
  `tokenizer_dir` (both prepared by the entry point: `launch/prepare.py`); resumes from the
  latest checkpoint there. `report(step, metrics)` is called at every logged step (process 0).
  Returns the last step's metrics (floats)."""
  os.makedirs(workdir, exist_ok=True)
  # Separate streams: initialisation and the loop's per-step noise never share a key.
  init_rng, loop_rng = jax.random.split(jax.random.key(config.train.seed))
  setup = state_lib.build_setup(config, init_rng)
  spec, mesh, optimizer = setup.spec, setup.mesh, setup.optimizer
  params, vae_params = pretrained.load_initial_weights(
    config.init, config.model, setup.params, setup.vae_params, mesh, config.sharding_rules
  )
  logging.info(
    "MedQUni parameters: %.2fM (VAE %.2fM), mesh %s",
    param_count(params) / 1e6,
    param_count(vae_params) / 1e6,
    dict(mesh.shape),
  )
  state = jax.jit(lambda p: state_lib.create_train_state(p, optimizer))(params)
  state_shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
  step_fn = step_lib.make_train_step(setup.model, setup.vae, optimizer, config.model, config.train)

  iterator = data_lib.make_train_iterator(config, tokenizer_dir, spec)
  manager = checkpoint_lib.make_manager(
    checkpoints.checkpoint_dir(workdir), save_every=config.train.checkpoint_every
  )
  restored, start_step = checkpoint_lib.restore_latest(
    manager, checkpoint_lib.abstract_like(state), iterator
  )
  if restored is not None:
    state = restored
    logging.info("resumed from step %d", start_step)
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
  with sharding_lib.mesh_context(mesh, config.sharding_rules):
    jitted = jax.jit(
      step_fn,
      in_shardings=(state_shardings, setup.vae_shardings, None, None),
      out_shardings=(state_shardings, None),
      donate_argnums=(0,),
    )
    global_first = sharding_lib.global_batch(first, mesh)
    start = time.perf_counter()
    compiled = jitted.lower(state, vae_params, global_first, loop_rng).compile()
    logging.info("train step compiled in %.1fs", time.perf_counter() - start)
  _log_memory(compiled)
  flops = _step_flops(compiled)

  writer = MetricsWriter(workdir, config.train.tensorboard)
  profile_start, profile_stop = config.train.profile_steps
  peak = config.train.peak_tflops_per_device * 1e12
  last = {}
  batch = global_first
  for step in range(start_step, config.train.steps):
    if step == profile_start and profile_stop > profile_start:
      jax.profiler.start_trace(os.path.join(workdir, "profile"))
    tick = time.perf_counter()
    state, metrics = compiled(state, vae_params, batch, loop_rng)
    if (step + 1) % config.train.log_every == 0 or step + 1 == config.train.steps:
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      seconds = time.perf_counter() - tick
      metrics.update(
        step_seconds=seconds,
        examples_per_second=config.train.batch_size / seconds,
        tflops_per_second_per_device=flops / seconds / 1e12,
      )
      if peak:
        metrics["mfu"] = flops / seconds / peak
      if not np.isfinite(metrics["loss"]):
        raise FloatingPointError(f"step {step + 1}: loss is {metrics['loss']}; stopping")
      writer.write(step + 1, metrics)
      if report is not None and jax.process_index() == 0:
        report(step + 1, metrics)
      last = dict(metrics, step=step + 1)
    if step + 1 == profile_stop and profile_stop > profile_start:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
    checkpoint_lib.save(manager, step + 1, state, iterator, force=step + 1 == config.train.steps)
    if step + 1 < config.train.steps:
      batch = sharding_lib.global_batch(data_lib.as_numpy_batch(next(iterator)), mesh)
  writer.close()
  manager.wait_until_finished()
  manager.close()
  return last
