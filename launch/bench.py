r"""MedQ-Bench entry point: every setting comes from configs/bench.py (`config.mode` picks the job).

  generate     write MedQ-Bench-style items (VLMEvalKit TSV) from the built-in demo examples
  score        score predictions files, or run a model (config.model=heuristic, or our model:
               config.checkpoint plus --model_config)
  align        human-judge alignment (kappa, accuracy, confusion PNGs) from a CSV
  restoration  PSNR/SSIM per task from an .npz of restored/reference arrays

  medq-bench --config=configs/bench.py:mode=generate --out_dir=/tmp/medq_demo
  medq-bench --config=configs/bench.py --config.items_dir=/tmp/medq_demo \
      --config.model=heuristic --out_dir=/tmp/medq_demo/report
  medq-bench --config=configs/bench.py --config.items_dir=/tmp/medq_demo \
      --config.checkpoint=runs/medq_uni_tiny_stage2 \
      --model_config=configs/medq_uni.py:size=tiny,stage=2 --out_dir=/tmp/medq_demo/ours
  medq-bench --config=configs/bench.py:judge=api --config.qa_items=medqbench_QA_test.tsv \
      --config.qa_predictions=GPT4o_medqbench_QA_test.tsv --out_dir=/tmp/gpt4o
"""

from __future__ import annotations

import json
import math
import os
import sys

from absl import app, flags, logging

from configs import bench as bench_config
from data_pipeline.chat_client import ChatError
from launch import cli, distributed
from medq_jax.bench import alignment, judge_factory, out_dir, tables
from medq_jax.bench.generator import FILE_NAMES
from medq_jax.bench.runner import BenchRunError
from medq_jax.bench.schema import BenchInputError

_CONFIG = cli.define_config_file("config", "configs/bench.py", "Bench config file.")
_MODEL_CONFIG = cli.define_config_file(
  "model_config",
  None,
  "Our model's training config, with --config.checkpoint (e.g. "
  "configs/medq_uni.py:size=tiny,stage=2).",
)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output directory.", required=True)
_OVERWRITE = flags.DEFINE_bool(
  "overwrite",
  False,
  "Replace an earlier run's outputs in a non-empty --out_dir (generate refuses a non-empty "
  "directory without it; other modes refuse files no earlier run listed).",
)
flags.adopt_module_key_flags(distributed)


# The data config of the demo examples `mode=generate` writes items from (64 px, small sizes).
DEMO_DATA_CONFIG = "image_size=64,runlocal"


def _generate(config, out_dir: str) -> None:
  from configs.data import medq_sample
  from data_pipeline.demo_examples import demo_examples
  from medq_jax.bench.generator import generate_items, write_items

  data_config = medq_sample.get_config(DEMO_DATA_CONFIG)
  items = generate_items(demo_examples(data_config, config.seed), config.seed)
  for kind, path in write_items(items, out_dir, config.split).items():
    logging.info("wrote %s items to %s", kind, path)
    print(f"{kind}: {path}")


def _track(config, track: str, kind: str) -> tuple[str, str] | None:
  """(items, predictions) of one track; items default to the file of `kind` in items_dir."""
  items = config[f"{track}_items"]
  if not items and config.items_dir:
    for ext in ("tsv", "jsonl"):
      candidate = os.path.join(
        config.items_dir, FILE_NAMES[kind].format(split=config.split) + f".{ext}"
      )
      if os.path.exists(candidate):
        items = candidate
        break
  return (items, config[f"{track}_predictions"] or None) if items else None


def load_model_from_checkpoint(workdir: str, model_config):
  """Our MedQ-UNI model from a medq-train workdir (checkpoints/, tokenizer/) as a BenchModel.

  model_config: the training config (ConfigDict) of that run, from --model_config.
  """
  if model_config is None:
    raise app.UsageError(
      "--model_config is required with --config.checkpoint (the training "
      "config of the run, e.g. configs/medq_uni.py:size=tiny,stage=2)"
    )
  from medq_jax.infer.bench_model import load_from_workdir

  return load_from_workdir(workdir, model_config)


def _score(config, out_dir: str) -> None:
  from medq_jax.bench import runner
  from medq_jax.bench.report import write_report

  model, name = None, config.model_name
  if config.checkpoint:
    model = load_model_from_checkpoint(config.checkpoint, _MODEL_CONFIG.value)
    name = name or os.path.basename(config.checkpoint.rstrip("/"))
  elif config.model == "heuristic":
    from medq_jax.bench.heuristic_model import HeuristicBenchModel

    model, name = HeuristicBenchModel(), name or "heuristic"
  elif config.model:
    raise app.UsageError(
      f"config.model={config.model!r}: only 'heuristic' is built in; use "
      "--config.checkpoint and --model_config for ours"
    )
  qa = _track(config, "qa", "qa")
  noref = _track(config, "noref", "description")
  paired = _track(config, "paired", "paired")
  if not (qa or noref or paired):
    raise app.UsageError("nothing to score: set config.items_dir or config.{qa,noref,paired}_items")
  if model is None:
    for label, spec in (("qa", qa), ("noref", noref), ("paired", paired)):
      if spec and not spec[1]:
        raise app.UsageError(
          f"config.{label}_predictions is required without config.model or config.checkpoint"
        )
  name = name or os.path.splitext(os.path.basename((qa or noref or paired)[1]))[0]
  if config.leaderboard:
    from medq_jax.bench import leaderboard

    leaderboard.load(leaderboard.BUILTIN if config.leaderboard == "builtin" else config.leaderboard)
  judge = judge_factory.make_judge(config.judge, out_dir) if (noref or paired) else None
  results = runner.run(
    name,
    judge,
    qa,
    noref,
    paired,
    model=model,
    out_dir=out_dir,
    rounds=config.judge.rounds,
    on_error="exclude" if config.skip_bad_rows else "raise",
    n_resamples=config.bootstrap,
    seed=config.seed,
    score_mode=config.judge.score_mode,
  )
  results.settings["split"] = config.split if config.items_dir else ""
  board = config.leaderboard
  if board == "builtin":
    from medq_jax.bench import leaderboard

    board = leaderboard.BUILTIN
  written = write_report(results, out_dir, board or None)
  with open(written["markdown"], encoding="utf-8") as handle:
    print(handle.read())


def _align(config, out_dir: str) -> None:
  from medq_jax.bench.report import write_csv

  if not config.human_scores:
    raise app.UsageError("config.human_scores is required in align mode")
  results = alignment.align(alignment.load_pairs(config.human_scores, config.judge_scores or None))
  rows = []
  for result in results:
    path = alignment.plot_confusion(
      result, os.path.join(out_dir, f"confusion_{result.dimension}.png")
    )
    rows.append(
      [
        result.dimension,
        result.n,
        tables.num(result.kappa),
        tables.pct(result.accuracy),
        " / ".join(tables.pct(r) for r in result.recall_per_class),
        os.path.basename(path),
      ]
    )
  table = (
    [
      "dimension",
      "n",
      "kappa_w (quadratic)",
      "accuracy",
      "recall per human class 0/1/2",
      "confusion",
    ],
    rows,
  )
  write_csv(os.path.join(out_dir, "alignment.csv"), table)
  with open(os.path.join(out_dir, "alignment.json"), "w", encoding="utf-8") as handle:
    json.dump(
      [
        {
          "dimension": r.dimension,
          "n": r.n,
          "kappa": None if math.isnan(r.kappa) else r.kappa,
          "kappa_undefined_reason": alignment.kappa_undefined_reason(r),
          "accuracy": r.accuracy,
          "recall_per_human_class": [None if math.isnan(x) else x for x in r.recall_per_class],
          "confusion": r.confusion.tolist(),
        }
        for r in results
      ],
      handle,
      indent=2,
      allow_nan=False,
    )
  text = "# Human-judge alignment\n\n" + tables.markdown(table) + "\n"
  with open(os.path.join(out_dir, "alignment.md"), "w", encoding="utf-8") as handle:
    handle.write(text)
  print(text)


def _restoration(config, out_dir: str) -> None:
  import numpy as np

  from medq_jax.bench.report import write_csv
  from medq_jax.bench.restoration import restoration_table

  if not config.restoration_npz:
    raise app.UsageError("config.restoration_npz is required in restoration mode")
  data = np.load(config.restoration_npz)
  rows = restoration_table(
    zip([str(t) for t in data["tasks"]], data["restored"], data["reference"])
  )
  table = tables.restoration_rows_table(rows)
  write_csv(os.path.join(out_dir, "restoration.csv"), table)
  print(tables.markdown(table))


_MODES = {"generate": _generate, "score": _score, "align": _align, "restoration": _restoration}


def _inputs(config) -> list[str]:
  """Files this run reads (never cleared from --out_dir)."""
  paths = [
    config[f"{t}_{kind}"] for t in ("qa", "noref", "paired") for kind in ("items", "predictions")
  ]
  paths += [config.human_scores, config.judge_scores, config.restoration_npz]
  if config.items_dir:
    for kind in FILE_NAMES:
      for ext in ("tsv", "jsonl"):
        paths.append(
          os.path.join(config.items_dir, FILE_NAMES[kind].format(split=config.split) + f".{ext}")
        )
  if config.leaderboard not in ("", "builtin"):
    paths.append(config.leaderboard)
  return [p for p in paths if p]


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  for key, value, valid in (
    ("mode", config.mode, bench_config.MODES),
    ("judge.kind", config.judge.kind, bench_config.JUDGES),
    ("judge.message_style", config.judge.message_style, bench_config.MESSAGE_STYLES),
    ("judge.score_mode", config.judge.score_mode, bench_config.SCORE_MODES),
  ):
    if value not in valid:
      raise app.UsageError(f"config.{key}={value!r}: expected one of {valid}")
  if config.checkpoint:  # only our model runs on JAX devices; the other jobs do not start JAX
    distributed.initialize()
  try:
    started = out_dir.prepare(_OUT_DIR.value, config.mode, _inputs(config), _OVERWRITE.value)
    _MODES[config.mode](config, _OUT_DIR.value)
    out_dir.finish(_OUT_DIR.value, config.mode, started)
  except (BenchInputError, BenchRunError, ChatError) as error:  # one message, no traceback
    sys.stderr.write(f"FATAL medq-bench: {error}\n")
    sys.exit(1)


def run_main() -> None:
  cli.run(main)


if __name__ == "__main__":
  run_main()
