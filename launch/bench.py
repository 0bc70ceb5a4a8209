"""MedQ-Bench scoring entry point.

Modes:
  generate  write MedQ-Bench-style items (VLMEvalKit TSV) from built-in demo examples
  score     score predictions files, or run a model (--model=heuristic or --checkpoint)
  align     human-judge alignment (kappa, accuracy, confusion PNGs) from a CSV
  restoration  PSNR/SSIM per task from an .npz of restored/reference arrays

Examples:
  python -m launch.bench --mode=generate --out_dir=/tmp/medq_demo
  python -m launch.bench --mode=score --items_dir=/tmp/medq_demo --model=heuristic \
      --judge=offline --out_dir=/tmp/medq_demo/report
  python -m launch.bench --mode=score --qa_items=medqbench_QA_test.tsv \
      --qa_predictions=GPT4o_medqbench_QA_test.tsv --judge=api --out_dir=/tmp/gpt4o
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging

from medq_jax.bench import alignment, tables
from medq_jax.bench.generator import FILE_NAMES

FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "score", ["generate", "score", "align", "restoration"], "What to do.")
flags.DEFINE_string("out_dir", None, "Output directory.", required=True)
flags.DEFINE_string("items_dir", None, "Directory holding medqbench_*_{split}.tsv files (score mode).")
flags.DEFINE_string("split", "test", "Split name in the item file names (dev or test).")
flags.DEFINE_string("qa_items", None, "Perception items file (TSV/JSONL).")
flags.DEFINE_string("qa_predictions", None, "Perception predictions file (index, prediction).")
flags.DEFINE_string("noref_items", None, "No-reference reasoning items file.")
flags.DEFINE_string("noref_predictions", None, "No-reference reasoning predictions file.")
flags.DEFINE_string("paired_items", None, "Paired reasoning items file.")
flags.DEFINE_string("paired_predictions", None, "Paired reasoning predictions file.")
flags.DEFINE_string("model", None, "Built-in model to run instead of predictions files: 'heuristic'.")
flags.DEFINE_string("model_name", None, "Name shown in reports (default: from the inputs).")
flags.DEFINE_string("checkpoint", None, "Our model's checkpoint: predictions are made by the model.")
flags.DEFINE_string("config", None, "Model config name passed to load_model_from_checkpoint.")
flags.DEFINE_enum("judge", "offline", ["offline", "api"], "Reasoning judge backend.")
flags.DEFINE_integer("judge_rounds", 1, "Rounds per judge question, averaged.")
flags.DEFINE_integer("judge_concurrency", 4, "Concurrent API judge requests.")
flags.DEFINE_float("judge_timeout_s", 60.0, "Per-request timeout for the API judge.")
flags.DEFINE_integer("judge_max_retries", 5, "Retries on 429/5xx/timeouts.")
flags.DEFINE_enum("judge_messages", "single", ["single", "split"],
                  "single: the template as one user message (reference scorer); split: system + user roles.")
flags.DEFINE_string("judge_cache", None, "Judge cache file (default: OUT_DIR/judge_cache.sqlite).")
flags.DEFINE_bool("skip_bad_rows", False, "Exclude malformed rows (counted in the report) instead of failing.")
flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples for confidence intervals.")
flags.DEFINE_integer("seed", 0, "Seed for generation and bootstrap.")
flags.DEFINE_string("human_scores", None, "align: CSV index,dimension,human_score[,judge_score].")
flags.DEFINE_string("judge_scores", None, "align: per-item judge scores (items/noref_items.jsonl).")
flags.DEFINE_string("restoration_npz", None, "restoration: npz with tasks [N], restored/reference [N,H,W].")


def _generate() -> None:
  from medq_jax.bench.demo_examples import demo_examples
  from medq_jax.bench.generator import generate_items, write_items
  paths = write_items(generate_items(demo_examples(FLAGS.seed), FLAGS.seed), FLAGS.out_dir, FLAGS.split)
  for kind, path in paths.items():
    logging.info("wrote %s items to %s", kind, path)
    print(f"{kind}: {path}")


def _judge():
  if FLAGS.judge == "offline":
    from medq_jax.bench.judge_offline import OfflineJudge
    return OfflineJudge()
  from medq_jax.bench.judge_api import ApiJudge, ApiJudgeConfig
  from medq_jax.bench.judge_cache import JudgeCache
  config = ApiJudgeConfig.from_env(concurrency=FLAGS.judge_concurrency, timeout_s=FLAGS.judge_timeout_s,
                                   max_retries=FLAGS.judge_max_retries, message_style=FLAGS.judge_messages)
  cache = JudgeCache(FLAGS.judge_cache or os.path.join(FLAGS.out_dir, "judge_cache.sqlite"))
  logging.info("judge: %r", config)  # the dataclass repr leaves the key out
  return ApiJudge(config, cache)


def _track(items_flag, predictions_flag, kind: str):
  items = items_flag
  if items is None and FLAGS.items_dir:
    for ext in ("tsv", "jsonl"):
      candidate = os.path.join(FLAGS.items_dir, FILE_NAMES[kind].format(split=FLAGS.split) + f".{ext}")
      if os.path.exists(candidate):
        items = candidate
        break
  return (items, predictions_flag) if items else None


def _score() -> None:
  from medq_jax.bench import runner
  from medq_jax.bench.report import write_report
  model, name = None, FLAGS.model_name
  if FLAGS.checkpoint:
    from medq_jax.bench.model_interface import load_model_from_checkpoint
    model = load_model_from_checkpoint(FLAGS.checkpoint, FLAGS.config)
    name = name or os.path.basename(FLAGS.checkpoint.rstrip("/"))
  elif FLAGS.model == "heuristic":
    from medq_jax.bench.heuristic_model import HeuristicBenchModel
    model, name = HeuristicBenchModel(), name or "heuristic"
  elif FLAGS.model:
    raise app.UsageError(f"--model={FLAGS.model!r}: only 'heuristic' is built in; use --checkpoint for ours")
  qa = _track(FLAGS.qa_items, FLAGS.qa_predictions, "qa")
  noref = _track(FLAGS.noref_items, FLAGS.noref_predictions, "description")
  paired = _track(FLAGS.paired_items, FLAGS.paired_predictions, "paired")
  if not (qa or noref or paired):
    raise app.UsageError("nothing to score: give --items_dir or --qa_items/--noref_items/--paired_items")
  if model is None:
    for label, spec in (("qa", qa), ("noref", noref), ("paired", paired)):
      if spec and not spec[1]:
        raise app.UsageError(f"--{label}_predictions is required without --model/--checkpoint")
  name = name or os.path.splitext(os.path.basename((qa or noref or paired)[1]))[0]
  judge = _judge() if (noref or paired) else None
  results = runner.run(name, judge, qa, noref, paired, model=model, out_dir=FLAGS.out_dir,
                       rounds=FLAGS.judge_rounds, on_error="exclude" if FLAGS.skip_bad_rows else "raise",
                       n_resamples=FLAGS.bootstrap, seed=FLAGS.seed)
  written = write_report(results, FLAGS.out_dir)
  print(open(written["markdown"], encoding="utf-8").read())


def _align() -> None:
  if not FLAGS.human_scores:
    raise app.UsageError("--human_scores is required in align mode")
  pairs = alignment.load_pairs(FLAGS.human_scores, FLAGS.judge_scores)
  results = alignment.align(pairs)
  rows = []
  for result in results:
    path = alignment.plot_confusion(result, os.path.join(FLAGS.out_dir, f"confusion_{result.dimension}.png"))
    rows.append([result.dimension, result.n, tables.num(result.kappa), tables.pct(result.accuracy),
                 " / ".join(tables.pct(r) for r in result.recall_per_class), os.path.basename(path)])
  table = (["dimension", "n", "kappa_w (quadratic)", "accuracy", "recall per human class 0/1/2", "confusion"], rows)
  from medq_jax.bench.report import write_csv
  write_csv(os.path.join(FLAGS.out_dir, "alignment.csv"), table)
  with open(os.path.join(FLAGS.out_dir, "alignment.json"), "w", encoding="utf-8") as handle:
    json.dump([{"dimension": r.dimension, "n": r.n, "kappa": r.kappa, "accuracy": r.accuracy,
                "confusion": r.confusion.tolist()} for r in results], handle, indent=2)
  text = "# Human-judge alignment\n\n" + tables.markdown(table) + "\n"
  with open(os.path.join(FLAGS.out_dir, "alignment.md"), "w", encoding="utf-8") as handle:
    handle.write(text)
  print(text)


def _restoration() -> None:
  import numpy as np
  from medq_jax.bench.report import write_csv
  from medq_jax.bench.restoration import restoration_table
  if not FLAGS.restoration_npz:
    raise app.UsageError("--restoration_npz is required in restoration mode")
  data = np.load(FLAGS.restoration_npz)
  rows = restoration_table(zip([str(t) for t in data["tasks"]], data["restored"], data["reference"]))
  table = tables.restoration_rows_table(rows)
  write_csv(os.path.join(FLAGS.out_dir, "restoration.csv"), table)
  print(tables.markdown(table))


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  {"generate": _generate, "score": _score, "align": _align, "restoration": _restoration}[FLAGS.mode]()


def run_main() -> None:
  app.run(main)


if __name__ == "__main__":
  run_main()
