"""The stage pipeline: one command runs MedQ-UNI's training stages in order, each in its own
directory, each resumable, each starting from the previous one's result.

  stage 0  the VAE: trained into <workdir>/vae (`vae_stage.train_vae`), or loaded when
           `init.flux_ae` names one (a file, or "builtin": the VAE shipped for tiny/small)
  stage 1  restoration pre-training in <workdir>/stage1: the gen (Med-IR) parameters alone
  stage 2  joint assessment + restoration in <workdir>/stage2, its parameters initialised from
           stage 1's final checkpoint (`init.from_checkpoint`), a fresh optimizer

A stage whose latest checkpoint has reached its steps is skipped once that step's parameters
restore and match their checksums; a stage cut short, or whose final step does not verify, resumes
from its latest good checkpoint (data iterator included; the trainer sets the bad step aside). `config.pipeline.stages` ("0-1-2") picks the
stages, `config.pipeline.stage{k}_steps` their lengths.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable

import jax

from medq_jax import checkpoints
from medq_jax import sharding as sharding_lib
from medq_jax.train import pretrained

STAGE_TITLES = {
  0: "VAE",
  1: "restoration pre-training (gen expert)",
  2: "joint assessment + restoration",
}
VAE_SUBDIR = "vae"  # `vae_stage.train_vae(config, workdir)` writes <workdir>/vae/ae.safetensors


def parse_stages(text: str) -> tuple[int, ...]:
  """`config.pipeline.stages` ("0-1-2", "1-2", "2") -> (0, 1, 2); ValueError naming the field."""
  try:
    stages = tuple(int(part) for part in str(text).split("-")) if text else ()
  except ValueError:
    stages = None
  if (
    not stages or any(s not in STAGE_TITLES for s in stages) or list(stages) != sorted(set(stages))
  ):
    raise ValueError(
      f"pipeline.stages: expected distinct stages from 0, 1, 2 in increasing order joined by "
      f"'-' (e.g. 0-1-2, 1-2), got {text!r}"
    )
  return stages


def stage_workdir(workdir: str, stage: int) -> str:
  """The directory of `stage`'s run inside the pipeline's `workdir`."""
  return os.path.join(workdir, VAE_SUBDIR if stage == 0 else f"stage{stage}")


def completed_step(run_dir: str) -> int:
  """The latest checkpoint step of the medq-train run in `run_dir` (0 when it has none), the
  same on every process (`checkpoints.agreed_steps`)."""
  steps = checkpoints.agreed_steps(checkpoints.checkpoint_dir(run_dir))
  return steps[0] if steps else 0


def final_step_problem(run_config, run_dir: str, step: int) -> str:
  """'' when `step` of the run in `run_dir` restores and its parameters match their checksums
  (what the next stage and evaluation read); otherwise why not, in one line. A params-only
  restore: no optimizer is built."""
  mesh = sharding_lib.make_mesh(run_config.mesh)
  try:
    checkpoints.restore_params(
      run_dir, run_config.model, step=step, mesh=mesh, rules=run_config.sharding_rules
    )
  except checkpoints.CheckpointError as error:
    return str(error)
  return ""


def stage_config(config, stage: int, workdir: str, vae_path: str):
  """The config of one stage of the pipeline `config`: its stage and steps, the VAE of stage 0,
  and for stage 2 after stage 1 the parameters of stage 1's final checkpoint."""
  out = config.copy_and_resolve_references()
  with out.unlocked():
    out.train.stage = stage
    out.train.steps = int(config.pipeline[f"stage{stage}_steps"])
    out.init.flux_ae = vae_path
    if stage == 2 and 1 in parse_stages(config.pipeline.stages):
      out.init.from_checkpoint = stage_workdir(workdir, 1)
      out.init.bagel_ema = out.init.qwen2 = out.init.siglip = ""
    out.workdir = stage_workdir(workdir, stage)
  return out


def _vae_path(config, workdir: str, say: Callable[[str], None], barrier: Callable[[str], None]):
  """Stage 0: the VAE file later stages load; trains one into <workdir>/vae unless
  `init.flux_ae` names one."""
  if config.init.flux_ae:
    path = pretrained.flux_ae_path(config.init, config.model)
    say(f"loading the VAE {path} (init.flux_ae={config.init.flux_ae}); not training one")
    return path
  if "vae_train" not in config:
    raise ValueError(
      "stage 0 trains the VAE per config.vae_train, which this config lacks: pick the stages "
      "with the config arg (configs/medq_uni.py:...,stages=0-1-2) or set init.flux_ae"
    )
  path = os.path.join(stage_workdir(workdir, 0), checkpoints.VAE_FILE)
  if jax.process_index() == 0:
    from medq_jax.train import vae_stage  # imported late: stage 0 only

    result = vae_stage.train_vae(config, workdir)
    path = result["path"]
    say(
      f"VAE {'reused' if result.get('reused') else 'trained'}: {path} "
      f"(val PSNR {result['psnr_mean']:.2f} dB)"
    )
  barrier("pipeline_stage0")
  return path


def _share_tokenizer(config, tokenizer_dir: str, run_dir: str) -> None:
  """Copies the run's own tokenizer into a stage directory, so each stage's directory loads
  alone (`checkpoints.run_tokenizer_dir`); nothing to do with `layout.tokenizer_dir`."""
  target = checkpoints.run_tokenizer_dir(run_dir, config.layout)
  if os.path.abspath(target) != os.path.abspath(tokenizer_dir) and not os.path.exists(target):
    shutil.copytree(tokenizer_dir, target)


def run_pipeline(
  config,
  workdir: str,
  tokenizer_dir: str,
  *,
  train_fn: Callable | None = None,
  report: Callable[[int, int, dict], None] | None = None,
  barrier: Callable[[str], None] = lambda name: None,
) -> dict:
  """Runs `config.pipeline.stages` in order in `workdir` with the prepared tokenizer.

  train_fn(config, workdir, tokenizer_dir, report=) trains one stage (default: `loop.train`);
  report(stage, step, metrics) sees every logged step; barrier(name) waits for every process
  (stage 0 trains the VAE on process 0 only). Prints progress per stage and the final checkpoint
  directory. Returns {"metrics": last stage's metrics, "stages": {stage: metrics},
  "final_workdir", "final_checkpoint_dir"}.
  """
  if train_fn is None:
    from medq_jax.train.loop import train as train_fn
  stages = parse_stages(config.pipeline.stages)
  main_process = jax.process_index() == 0
  results: dict[int, dict] = {}
  vae_path = config.init.flux_ae
  for index, stage in enumerate(stages, 1):
    label = f"stage {stage} ({index}/{len(stages)}, {STAGE_TITLES[stage]})"
    say = lambda text, label=label: print(f"{label}: {text}", flush=True) if main_process else None
    if stage == 0:
      vae_path = _vae_path(config, workdir, say, barrier)
      results[0] = {}
      continue
    run_config = stage_config(config, stage, workdir, vae_path)
    run_dir, steps = run_config.workdir, run_config.train.steps
    done = completed_step(run_dir)
    if done >= steps:
      problem = final_step_problem(run_config, run_dir, done)
      if not problem:
        say(f"complete at step {done} in {run_dir}, its parameters verified; skipped")
        results[stage] = {"step": done}
        continue
      say(f"final step {done} does not verify ({problem}); resuming from the last good step")
    else:
      say(
        f"{'resuming from step ' + str(done) if done else 'starting'} in {run_dir}, {steps} steps"
      )
    if main_process:
      os.makedirs(run_dir, exist_ok=True)
      _share_tokenizer(config, tokenizer_dir, run_dir)

    def on_step(step, metrics, stage=stage, say=say, steps=steps):
      say(f"step {step}/{steps} loss {metrics['loss']:.4f}")
      if report is not None:
        report(stage, step, metrics)

    results[stage] = train_fn(run_config, run_dir, tokenizer_dir, report=on_step)
    logging.info("%s: done", label)
  last = stages[-1]
  final_workdir = stage_workdir(workdir, last)
  final = vae_path if last == 0 else checkpoints.checkpoint_dir(final_workdir)
  if main_process:
    print(f"pipeline done: final checkpoint directory {final}", flush=True)
  return {
    "metrics": results[last],
    "stages": results,
    "final_workdir": final_workdir,
    "final_checkpoint_dir": final,
  }
