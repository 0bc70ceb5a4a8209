"""The engine's fine-tuning step (`finetune=trainer`): each iteration trains the stage-2 objective
(`medq_jax.train.loop.train`: description CE weighted by `train.lambda_iqa` plus restoration)
on every annotation accumulated so far, starting from the previous iteration's checkpoint (the
base run at the first), in `<workdir>/iter_<t>/finetune`.

The accumulated annotations are written as a dataset the trainer's one loader reads
(`finetune_data`, in `iter_<t>/finetune_data`). The run directory gets the base run's tokenizer,
so it loads alone (`infer.bench_model.load_from_workdir`). A kill during training is resumed by
the trainer itself from the run's latest checkpoint when the engine reruns the phase.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Mapping

from medq_jax import checkpoints
from medq_jax.engine import finetune_data

RUN_SUBDIR = "finetune"
DATA_SUBDIR = "finetune_data"


def run_config(
  model_config,
  data_dir: str,
  image_size: int,
  from_checkpoint: str,
  run_dir: str,
  steps: int,
  batch_size: int,
  learning_rate: float,
):
  """The trainer config of one fine-tuning run: `model_config` (configs/medq_uni.py) at stage
  2 on the annotations' dataset, from `from_checkpoint`'s parameters with a fresh optimizer, no
  condition dropout (MedQ-Uni's fine-tuning), one checkpoint at the end."""
  config = model_config.copy_and_resolve_references()
  with config.unlocked():
    config.data.data_dir = data_dir
    config.data.name = finetune_data.NAME
    config.data.version = finetune_data.VERSION
    config.data.image_size = int(image_size)
    config.data.loader_workers = 0
    config.train.stage = 2
    config.train.steps = int(steps)
    config.train.batch_size = int(batch_size)
    config.train.learning_rate = float(learning_rate)
    config.train.warmup_steps = min(int(config.train.warmup_steps), max(int(steps) - 1, 0))
    config.train.checkpoint_every = int(steps)
    config.train.log_every = max(1, int(steps) // 5)
    config.train.tensorboard = False
    config.train.dropout_text = config.train.dropout_vit = config.train.dropout_vae = 0.0
    config.train.profile_steps = (0, 0)
    config.init.from_checkpoint = from_checkpoint
    config.init.bagel_ema = config.init.qwen2 = config.init.siglip = ""
    config.layout.tokenizer_dir = ""
    config.workdir = run_dir
  return config


class TrainerFinetune:
  """`Engine(finetune=TrainerFinetune(...))`. `model_config`: the evaluated model's config
  (configs/medq_uni.py; its VAE in `init.flux_ae`); `base_run`: the medq-train run it was
  loaded from; `pool`: the pool `loop.Split` the annotations are about. `train_fn(config,
  workdir, tokenizer_dir)`: `medq_jax.train.loop.train` by default. `epochs` > 0 sets the steps
  from the data size (the paper fine-tunes 3 epochs) instead of `steps`."""

  def __init__(
    self,
    model_config,
    base_run: str,
    pool,
    workdir: str,
    steps: int,
    batch_size: int,
    learning_rate: float,
    train_fn: Callable | None = None,
    epochs: float = 0.0,
  ):
    self.model_config, self.base_run, self.pool, self.workdir = (
      model_config,
      base_run,
      pool,
      workdir,
    )
    self.steps, self.batch_size, self.learning_rate = steps, batch_size, learning_rate
    self.train_fn, self.epochs = train_fn, float(epochs)

  def steps_for(self, examples: int) -> int:
    """`steps`, or with `epochs` > 0 that many passes over the examples (at least one step)."""
    if self.epochs > 0:
      return max(1, math.ceil(self.epochs * examples / self.batch_size))
    return int(self.steps)

  def _tokenizer(self, run_dir: str) -> str:
    """The base run's tokenizer, copied into `run_dir` (once) so the run loads alone."""
    source = checkpoints.run_tokenizer_dir(self.base_run, self.model_config.layout)
    target = os.path.join(run_dir, checkpoints.TOKENIZER_SUBDIR)
    if not os.path.exists(os.path.join(source, "tokenizer.json")):
      raise ValueError(f"{self.base_run}: no tokenizer at {source} (a medq-train run directory)")
    if not os.path.exists(target):
      os.makedirs(run_dir, exist_ok=True)
      shutil.copytree(source, target + ".copying", dirs_exist_ok=True)
      os.replace(target + ".copying", target)
    return target

  def __call__(self, state, iteration_dir: str) -> Mapping:
    """Fine-tunes on every accumulated annotation; returns the loop's finetune record."""
    rows = finetune_data.read_rows(os.path.join(self.workdir, f) for f in state.data_files)
    examples = [
      finetune_data.annotation_example(row, self.pool.images, self.pool.examples) for row in rows
    ]
    data_dir = os.path.join(iteration_dir, DATA_SUBDIR)
    if not examples:
      raise ValueError(f"{self.workdir}: no accumulated annotation to fine-tune on")
    image_size = int(examples[0]["low"].shape[0])
    written = finetune_data.write_dataset(examples, data_dir, image_size)
    previous = state.checkpoints[-1] if state.checkpoints else ""
    start = os.path.join(self.workdir, previous) if previous else self.base_run
    run_dir = os.path.join(iteration_dir, RUN_SUBDIR)
    config = run_config(
      self.model_config,
      data_dir,
      image_size,
      start,
      run_dir,
      self.steps_for(written["examples"]),
      self.batch_size,
      self.learning_rate,
    )
    tokenizer_dir = self._tokenizer(run_dir)
    train_fn = self.train_fn
    if train_fn is None:
      from medq_jax.train.loop import train as train_fn  # pylint: disable=g-import-not-at-top
    metrics = train_fn(config, run_dir, tokenizer_dir)
    return {
      "checkpoint": os.path.relpath(run_dir, self.workdir),
      "from": os.path.relpath(start, self.workdir) if previous else start,
      "steps": int(metrics.get("step", config.train.steps)),
      "loss": float(metrics["loss"]) if "loss" in metrics else None,
      "loss_ce": float(metrics["loss_ce"]) if "loss_ce" in metrics else None,
      "examples": written["examples"],
      "skipped": written["skipped"],
      "data": os.path.relpath(written["directory"], self.workdir),
      "note": "",
    }
