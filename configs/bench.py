r"""MedQ-Bench run config (big_vision style): what `medq-bench` scores and how.

Usage:
  medq-bench --config=configs/bench.py:mode=generate --out_dir=/tmp/medq_items
  medq-bench --config=configs/bench.py --config.items_dir=/tmp/medq_items \
      --config.model=heuristic --out_dir=/tmp/medq_report
  medq-bench --config=configs/bench.py:judge=api --config.qa_items=medqbench_QA_test.tsv \
      --config.qa_predictions=GPT4o_medqbench_QA_test.tsv --out_dir=/tmp/gpt4o
  medq-bench --config=configs/bench.py --config.items_dir=/tmp/medq_items \
      --config.checkpoint=runs/medq_uni_tiny_stage2 \
      --model_config=configs/medq_uni.py:size=tiny,stage=2 --out_dir=/tmp/ours

Options of the config arg: mode (generate|score|align|restoration, default score) and judge
(offline|api, default offline). Unset paths are empty strings.
"""

from __future__ import annotations

import ml_collections

from configs import common

MODES = ("generate", "score", "align", "restoration")
JUDGES = ("offline", "api")
MESSAGE_STYLES = ("single", "split")
SCORE_MODES = ("strict", "vlmevalkit")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, mode="score", judge="offline")
  if arg.mode not in MODES:
    raise ValueError(f"config arg: mode must be one of {MODES}, got {arg.mode!r}")
  if arg.judge not in JUDGES:
    raise ValueError(f"config arg: judge must be one of {JUDGES}, got {arg.judge!r}")
  config = ml_collections.ConfigDict()
  config.mode = arg.mode
  config.seed = 0  # Item generation and bootstrap resampling.

  # generate writes, and score reads, medqbench_{QA,description,paired_description}_{split}.tsv.
  config.items_dir = ""
  config.split = "test"  # dev | test

  # score: per track (qa: perception; noref and paired: reasoning) an items file (TSV/JSONL;
  # empty: looked up in items_dir) and a predictions file (index, prediction; empty: the model
  # below predicts).
  for track in ("qa", "noref", "paired"):
    config[f"{track}_items"] = ""
    config[f"{track}_predictions"] = ""
  config.model = ""  # Built-in model instead of predictions files: "heuristic".
  config.checkpoint = ""  # Our model: a medq-train workdir, with --model_config.
  config.model_name = ""  # Shown in reports (default: from the inputs).
  config.bootstrap = 1000  # Resamples for confidence intervals.
  config.skip_bad_rows = False  # Exclude malformed rows (counted in the report) instead of failing.
  # Published rows shown beside ours: "builtin" (the MedQ-Bench README leaderboard shipped in
  # medq_jax/bench), a CSV path of the same layout, or "" for none.
  config.leaderboard = "builtin"

  config.judge = judge_config(arg.judge)

  # align: CSV index,dimension,human_score[,judge_score] and per-item judge scores
  # (a report's items/noref_items.jsonl).
  config.human_scores = ""
  config.judge_scores = ""

  # restoration: .npz with tasks [N], restored [N, H, W], reference [N, H, W].
  config.restoration_npz = ""
  return config


def judge_config(kind: str = "offline") -> ml_collections.ConfigDict:
  """The MedQ-Bench reasoning judge's settings (also `config.evaluate.judge` of medq_uni.py)."""
  if kind not in JUDGES:
    raise ValueError(f"config arg: judge must be one of {JUDGES}, got {kind!r}")
  return ml_collections.ConfigDict(
    dict(
      kind=kind,  # offline: rule judge (not an LLM); api: OpenAI-compatible endpoint (env).
      rounds=1,  # Rounds per question, averaged.
      concurrency=4,
      timeout_s=60.0,
      max_retries=5,  # On 429/5xx/timeouts.
      # single: the template as one user message (the reference scorer); split: system + user.
      message_style="single",
      # strict: scores outside the dimension's scale rejected; vlmevalkit: VLMEvalKit's
      # parse_score_from_response and placeholder filling, quirks included.
      score_mode="strict",
      cache_path="",  # Empty: OUT_DIR/judge_cache.sqlite.
    )
  )
