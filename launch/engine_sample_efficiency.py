r"""The sample-efficiency experiment (MedQ-Engine Fig. 3 c, f): failure-driven vs random sampling
at equal annotation budgets, on the built-in data with the tiny model (docs/engine.md).

  python -m launch.engine_sample_efficiency --config=configs/engine.py:sample_efficiency \
      --workdir=runs/engine_sample_efficiency

1. base: tiny stage 2 trained `experiment.base_steps` steps on the pool split (`<workdir>/base`);
2. per budget B in `experiment.budgets` (pool images): one engine iteration (evaluate on dev,
   cluster, retrieve, adaptive sampling of B images, offline oracle, review auto-accepted,
   dedup) that fine-tunes the base on its N annotations (`<workdir>/failure_b<B>`); then random
   sampling: N pool items drawn uniformly, labelled by the same oracle, the same fine-tune
   (`<workdir>/random_b<B>`);
3. every model's greedy perception accuracy on the test split; `<workdir>/sample_efficiency.csv`
   and `.png` (accuracy vs annotations, two curves from the base model at 0).

Every step resumes: rerun the command after a kill.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags

from launch import cli

_CONFIG = cli.define_config_file("config", "configs/engine.py", "Config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Experiment directory.")


def train_base(config, workdir: str) -> str:
  """The base model: tiny stage 2 on the pool split (resumes; returns its run directory)."""
  from launch import engine_build as engine_launch
  from launch import jobs

  model = engine_launch.model_config(config)
  with model.unlocked():
    model.data = config.data.copy_and_resolve_references()
    model.train.steps = int(config.experiment.base_steps)
    model.train.batch_size = int(config.trainer.batch_size)
    model.train.checkpoint_every = int(config.experiment.base_steps)
    model.train.tensorboard = False
  run_dir = os.path.join(workdir, "base")
  jobs.run_training(model, run_dir)
  return run_dir


def run(config, workdir: str) -> list[dict]:
  """The experiment's rows (see the module docstring); writes the CSV and the figure."""
  import jax

  from launch import engine_build as engine_launch
  from launch import prepare
  from medq_jax.engine import loop_state, sample_efficiency

  # Its runs compile the same tiny programs again and again: a persistent cache in the workdir,
  # unless one is configured already (JAX_COMPILATION_CACHE_DIR: a shared cache is kept).
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  prepare.ensure_dataset(config.data)
  base_run = train_base(config, workdir)
  with config.unlocked():
    config.model_workdir = base_run
  test = None
  rows = []

  def measure(strategy, budget, annotations, steps, run_dir):
    model = engine_launch.load_ours(config, run_dir)
    accuracy, count = sample_efficiency.mcq_accuracy(model, test)
    row = dict(
      strategy=strategy,
      images_budget=budget,
      annotations=annotations,
      steps=steps,
      test_accuracy=accuracy,
      test_items=count,
    )
    print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    rows.append(row)

  for budget in config.experiment.budgets:
    engine_config = config.copy_and_resolve_references()
    with engine_config.unlocked():
      engine_config.budget = int(budget)
    engine_dir = os.path.join(workdir, f"failure_b{budget}")
    engine = engine_launch.build_engine(engine_config, engine_dir)
    if test is None:
      test = engine.test
      measure("base", 0, 0, 0, base_run)
    state = engine.run()
    if engine.halted or engine.waiting or not state.checkpoints:
      raise ValueError(f"{engine_dir}: the engine iteration did not fine-tune: {state.stopped}")
    tuned = state.records[-1]["finetune"]
    annotations = len(state.accumulated)
    measure(
      "failure-driven",
      budget,
      annotations,
      tuned["steps"],
      os.path.join(engine_dir, tuned["checkpoint"]),
    )

    random_dir = os.path.join(workdir, f"random_b{budget}")
    data_file = os.path.join(random_dir, "iter_0", "data.jsonl")
    if not os.path.exists(data_file):
      labelled = sample_efficiency.random_annotations(
        engine.pool,
        engine.dev,
        engine.test,
        annotations,
        engine.oracle.oracle,
        seed=config.seed + int(budget),
        max_distance=config.dedup_max_distance,
      )
      sample_efficiency.write_rows(labelled, data_file)
    trainer = engine_launch.build_finetune(engine_config, random_dir, engine.pool)
    state = loop_state.LoopState(data_files=[os.path.relpath(data_file, random_dir)])
    tuned = trainer(state, os.path.join(random_dir, "iter_0"))
    run_dir = os.path.join(random_dir, tuned["checkpoint"])
    measure("random", budget, tuned["examples"], tuned["steps"], run_dir)

  sample_efficiency.write_table(rows, os.path.join(workdir, "sample_efficiency.csv"))
  sample_efficiency.plot(
    rows,
    os.path.join(workdir, "sample_efficiency.png"),
    f"failure-driven vs random (tiny model, built-in data, {rows[0]['test_items']} test MCQs)",
  )
  return rows


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.getLogger().setLevel(logging.WARNING)
  config = _CONFIG.value
  workdir = _WORKDIR.value or "runs/engine_sample_efficiency"
  from medq_jax.train.loop import STOP_ERRORS

  try:
    rows = run(config, workdir)
  except (ValueError, OSError, *STOP_ERRORS) as error:
    sys.stderr.write(f"FATAL engine_sample_efficiency: {error}\n")
    sys.exit(1)
  print(f"table: {os.path.join(workdir, 'sample_efficiency.csv')} ({len(rows)} rows)")
  print(f"figure: {os.path.join(workdir, 'sample_efficiency.png')}")


def run_main() -> None:
  cli.run(main)


if __name__ == "__main__":
  run_main()
