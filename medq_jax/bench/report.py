"""Writes a run's report: Markdown, JSON, CSV tables, per-item JSONL and PNG plots.

Layout of ``out_dir``: ``report.md``, ``report.json``, ``tables/*.csv``,
``items/perception_items.jsonl`` / ``items/{noref,paired}_items.jsonl`` (per-item
scores; the judge's are what ``--config=configs/bench.py:mode=align`` joins with human scores),
``exclusions.csv`` and ``plots/*.png``. Every report names the judge; the offline
judge's description says it is not an LLM judge.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import math
import os

from medq_jax.bench import leaderboard, plots, tables
from medq_jax.bench.perception import disagreements, unparseable_reasons, vlmevalkit_accuracy
from medq_jax.bench.prompts import DIMENSIONS
from medq_jax.bench.runner import BenchResults


def _clean(value):
  if isinstance(value, float) and math.isnan(value):
    return None
  if isinstance(value, dict):
    return {k: _clean(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_clean(v) for v in value]
  return value


def write_csv(path: str, table: tables.Table) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  columns, rows = table
  with open(path, "w", newline="", encoding="utf-8") as handle:
    writer = csv.writer(handle)
    writer.writerow(columns)
    writer.writerows(rows)
  return path


def _write_jsonl(path: str, records) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as handle:
    for record in records:
      handle.write(json.dumps(_clean(record), ensure_ascii=False) + "\n")


MAX_LISTED_DISAGREEMENTS = 50


def _leaderboard_md(results: BenchResults, path: str, out_dir: str, written: dict) -> list[str]:
  """The published rows beside ours, per scored track (perception under both extractions)."""
  published = leaderboard.load(path)
  md = [f"## Beside the MedQ-Bench leaderboard (`{os.path.basename(path)}`)", ""]
  split = results.settings.get("split", "")
  note = "this run" + (f", {split} split" if split else "")
  for track_name in ("perception", "noref", "paired"):
    track = results.tracks.get(track_name)
    if not track:
      continue
    if track_name == "perception":
      rows = {(r.group, r.value): r for r in track.perception_rows}
      ours = []
      for label, attr in (("VLMEvalKit rules", "accuracy_vlmevalkit"), ("strict", "accuracy")):
        values = [
          100 * getattr(rows[("question_type", q)], attr) if ("question_type", q) in rows else None
          for q in ("Yes-or-No", "What", "How")
        ]
        overall = 100 * getattr(rows[("overall", "all")], attr)
        ours.append((f"{results.model} [{label}]", values, overall, note))
    else:
      summary = track.reasoning_summaries[0]
      values = [summary.means[d] for d in DIMENSIONS]
      source = f"{note}, judge {results.judge_name}"
      ours = [(results.model, values, summary.overall, source)]
    columns, body = leaderboard.table(track_name, published[track_name], ours)
    table = (columns, body)
    written[f"leaderboard_{track_name}"] = write_csv(
      os.path.join(out_dir, "tables", f"leaderboard_{track_name}.csv"), table
    )
    md += [f"### {track_name}", "", tables.markdown(table), ""]
  return md


def write_report(
  results: BenchResults, out_dir: str, leaderboard_path: str | None = None
) -> dict[str, str]:
  """Writes every artifact; returns {name: path}. ``leaderboard_path``: published rows to
  show beside ours (`leaderboard.BUILTIN` for the shipped copy)."""
  os.makedirs(out_dir, exist_ok=True)
  written: dict[str, str] = {}
  perception = results.tracks.get("perception")
  noref = results.tracks.get("noref")
  paired = results.tracks.get("paired")
  noref_overall = noref.reasoning_summaries[0] if noref else None

  md = [
    f"# MedQ-Bench report: {results.model}",
    "",
    f"Generated {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}.",
    "",
  ]
  if results.judge_name:
    md += [f"**Judge:** `{results.judge_name}`: {results.judge_description}.", ""]
  for track in results.tracks.values():
    md.append(
      f"- {track.track}: {track.n_items} items from `{track.items_path}`, predictions "
      f"`{track.predictions_path}`"
    )
  md.append("")

  table1 = tables.table1(
    results.model, perception.perception_rows if perception else None, noref_overall
  )
  written["table1"] = write_csv(os.path.join(out_dir, "tables", "table1.csv"), table1)
  md += [
    "## Table 1: perception by question type and no-reference reasoning",
    "",
    tables.markdown(table1),
    "",
  ]

  if perception:
    rows = perception.perception_rows
    breakdown = tables.perception_breakdown_table(rows)
    modality = tables.modality_table(results.model, rows)
    written["perception_breakdown"] = write_csv(
      os.path.join(out_dir, "tables", "perception_breakdown.csv"), breakdown
    )
    written["perception_by_modality"] = write_csv(
      os.path.join(out_dir, "tables", "perception_by_modality.csv"), modality
    )
    reasons = unparseable_reasons(perception.perception_outcomes)
    disagree = disagreements(perception.perception_outcomes)
    disagree_table = tables.disagreement_table(disagree)
    written["perception_disagreements"] = write_csv(
      os.path.join(out_dir, "tables", "perception_disagreements.csv"), disagree_table
    )
    overall_row = rows[0]
    md += [
      "## Perception accuracy",
      "",
      f"- strict extraction (ours): {tables.pct(overall_row.accuracy)} "
      f"({overall_row.correct}/{overall_row.n}), 95% CI "
      f"[{tables.pct(overall_row.ci_low)}, {tables.pct(overall_row.ci_high)}]",
      f"- VLMEvalKit rules (the number VLMEvalKit prints): "
      f"{tables.pct(overall_row.accuracy_vlmevalkit)} "
      f"({overall_row.correct_vlmevalkit}/{overall_row.n})",
      f"- items where the two read different options: {len(disagree)}",
      "",
      "## Perception accuracy per modality",
      "",
      tables.markdown(modality),
      "",
      "## Perception breakdowns (95% bootstrap CI)",
      "",
      tables.markdown(breakdown),
      "",
    ]
    if reasons:
      md += ["Answers that could not be read (counted wrong):", ""]
      md += [f"- {reason}: {count}" for reason, count in reasons.items()] + [""]
    if disagree:
      shown = (disagree_table[0], disagree_table[1][:MAX_LISTED_DISAGREEMENTS])
      md += [
        "## Items where strict and VLMEvalKit extraction disagree",
        "",
        tables.markdown(shown),
        "",
      ]
      if len(disagree) > MAX_LISTED_DISAGREEMENTS:
        md += [f"... all {len(disagree)} in `tables/perception_disagreements.csv`.", ""]
    _write_jsonl(
      os.path.join(out_dir, "items", "perception_items.jsonl"),
      (dataclasses.asdict(o) for o in perception.perception_outcomes),
    )
    for group, name in (
      ("modality", "perception_by_modality"),
      ("degradation_level", "perception_by_level"),
      ("scope", "perception_by_scope"),
      ("question_type", "perception_by_question_type"),
    ):
      path = plots.accuracy_bars(
        rows,
        group,
        os.path.join(out_dir, "plots", f"{name}.png"),
        f"{results.model}: perception accuracy by {group.replace('_', ' ')}",
      )
      if path:
        written[f"plot_{name}"] = path

  for track, title in ((noref, "No-reference reasoning"), (paired, "Paired comparison reasoning")):
    if not track:
      continue
    table = tables.reasoning_table(track.reasoning_summaries)
    written[f"reasoning_{track.track}"] = write_csv(
      os.path.join(out_dir, "tables", f"reasoning_{track.track}.csv"), table
    )
    by_modality = tables.reasoning_table(track.reasoning_modality)
    write_csv(
      os.path.join(out_dir, "tables", f"reasoning_{track.track}_by_modality.csv"), by_modality
    )
    md += [
      f"## {title} (judge `{results.judge_name}`; mean [95% CI] (n scored); Overall = sum, 0-8)",
      "",
      tables.markdown(table),
      "",
      "By modality:",
      "",
      tables.markdown(by_modality),
      "",
      f"Judge requests: {track.judge_requests} ({track.judge_cached} answered from cache).",
      "",
    ]
    _write_jsonl(
      os.path.join(out_dir, "items", f"{track.track}_items.jsonl"),
      (dataclasses.asdict(s) for s in track.reasoning_scores),
    )
    path = plots.dimension_bars(
      track.reasoning_summaries,
      os.path.join(out_dir, "plots", f"reasoning_{track.track}_dimensions.png"),
      f"{results.model}: {title.lower()} ({results.judge_name})",
    )
    if path:
      written[f"plot_reasoning_{track.track}"] = path

  if leaderboard_path:
    md += _leaderboard_md(results, leaderboard_path, out_dir, written)

  exclusions = results.exclusions
  counts = tables.exclusions_table(exclusions)
  md += [
    "## Excluded or counted-wrong items",
    "",
    tables.markdown(counts) if exclusions else "None: every item was scored.",
    "",
  ]
  written["exclusions"] = write_csv(
    os.path.join(out_dir, "exclusions.csv"),
    (["index", "reason", "detail"], [[e.index, e.reason, e.detail] for e in exclusions]),
  )
  md += ["## Files", ""] + [f"- `{os.path.relpath(p, out_dir)}`" for p in written.values()] + [""]

  payload = {
    "model": results.model,
    "judge": {"name": results.judge_name, "description": results.judge_description},
    "settings": results.settings,
    "table1": dict(zip(*[table1[0], table1[1][-1]])),
    "perception": [dataclasses.asdict(r) for r in perception.perception_rows]
    if perception
    else None,
    "perception_vlmevalkit_accuracy": vlmevalkit_accuracy(perception.perception_outcomes)
    if perception
    else None,
    "perception_unparseable": unparseable_reasons(perception.perception_outcomes)
    if perception
    else None,
    "perception_disagreements": [dataclasses.asdict(d) for d in disagree] if perception else None,
    "reasoning": {
      t.track: [dataclasses.asdict(s) for s in t.reasoning_summaries] for t in (noref, paired) if t
    },
    "exclusions": {"count": len(exclusions), "by_reason": dict(counts[1])},
    "files": {k: os.path.relpath(v, out_dir) for k, v in written.items()},
  }
  written["json"] = os.path.join(out_dir, "report.json")
  with open(written["json"], "w", encoding="utf-8") as handle:
    json.dump(_clean(payload), handle, indent=2, ensure_ascii=False)
  written["markdown"] = os.path.join(out_dir, "report.md")
  with open(written["markdown"], "w", encoding="utf-8") as handle:
    handle.write("\n".join(md))
  return written
