"""The evaluation job behind `medq-evaluate` and `medq-train`'s evaluate.after_training (no flags
here, so both entry points can import it): load, assess-then-restore a split, write the report.
"""

from __future__ import annotations

import json
import os
import time


def run_evaluation(config, source: str, out_dir: str | None = None, say=print) -> dict:
  """Evaluates the model in `source` on config.evaluate.split; returns {name: path} of the
  report files (markdown: report.md)."""
  from launch import prepare
  from medq_jax import layout as layout_lib
  from medq_jax.bench.judge_factory import make_judge
  from medq_jax.bench.restoration_report import RestorationCase, write_restoration_report
  from medq_jax.infer.assess_restore import AssessRestore, InferenceSettings
  from medq_jax.infer.loading import load_for_inference
  from medq_jax.infer.restoration_run import restore_split

  ev = config.evaluate
  out_dir = out_dir or os.path.join(source, "evaluation", ev.split)
  prepare.ensure_dataset(config.data)
  start = time.perf_counter()
  loaded = load_for_inference(config, source, dtype=ev.dtype or None)
  say(f"evaluate: loaded {loaded.source} (step {loaded.step}), VAE {loaded.vae_path}")
  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, 2)
  settings = InferenceSettings.from_config(config.infer)
  engine = AssessRestore(
    config.model, loaded.params, loaded.vae_params, loaded.tokenizer, spec, settings
  )
  records = restore_split(
    engine,
    config.data,
    ev.split,
    batch_size=ev.batch_size,
    max_examples=ev.max_examples,
    tasks=tuple(ev.tasks),
    progress=say,
  )
  restore_seconds = time.perf_counter() - start
  cases = [RestorationCase(**record) for record in records]
  run_info = dict(
    source=loaded.source,
    step=loaded.step,
    vae=loaded.vae_path,
    model_size=config.model.size,
    expert_scope=config.model.expert_scope,
    dtype=ev.dtype or "float32 (as saved)",
    data_dir=config.data.data_dir,
    split=ev.split,
    inference=json.loads(config.infer.to_json()),
    seconds_restoring=round(restore_seconds, 1),
    images_per_second=round(len(cases) / restore_seconds, 3),
  )
  judge = make_judge(ev.judge, out_dir)
  paths = write_restoration_report(
    cases,
    out_dir,
    title=f"MedQ-UNI restoration: {config.model.size} on {ev.split}",
    run_info=run_info,
    judge=judge,
    panel_count=ev.panel_count,
    rounds=ev.judge.rounds,
  )
  say(f"evaluate: report at {paths['markdown']}")
  return paths
