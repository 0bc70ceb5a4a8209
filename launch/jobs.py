"""The jobs behind the entry points, without flags, so that tests and other entry points can
import them (an entry point module defines absl flags; two of them in one process collide)."""

from __future__ import annotations

import jax

from launch import distributed


def run_training(config, workdir: str) -> dict:
  """The main job after flags: prepare the dataset and tokenizer (process 0; the others wait),
  then train one stage, or the stages of `config.pipeline.stages` in order. Returns the last
  step's metrics (of the last stage)."""
  from launch import prepare
  from medq_jax.train.loop import train

  tokenizer_dir = prepare.prepare_training(config, workdir)
  if config.get("pipeline") and config.pipeline.stages:
    from medq_jax.train.pipeline import run_pipeline

    result = run_pipeline(config, workdir, tokenizer_dir, barrier=distributed.barrier)
    if config.evaluate.after_training and jax.process_index() == 0:
      from launch.restoration_eval import run_evaluation

      run_evaluation(config, result["final_workdir"])
    return result["metrics"]
  return train(config, workdir, tokenizer_dir)


def run_vae_stage(config, workdir: str, command: str | None = None) -> dict:
  """The job after flags: the precomputed dataset (built when missing), then stage 0."""
  from launch import prepare
  from medq_jax.train.vae_stage import train_vae

  prepare.ensure_dataset(config.data)
  return train_vae(config, workdir, command=command)
