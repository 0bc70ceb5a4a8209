"""Tables in the paper's layouts, as (columns, rows) built by pure functions.

* `table1`: perception accuracy by question type + no-reference reasoning dimensions
  (paper Table 1), with a random-guess row computed from the items' option counts;
* `perception_breakdown_table`: every breakdown with n, accuracy, 95 % CI, baseline;
* `modality_table`: perception accuracy per modality (paper Table 7);
* `reasoning_table`: dimension means with CIs, Overall = sum (paper Tables 1, 8, 9).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence

from medq_jax.bench.perception import GroupAccuracy
from medq_jax.bench.prompts import DIMENSION_TITLES, DIMENSIONS
from medq_jax.bench.reasoning import ReasoningSummary
from medq_jax.bench.schema import Exclusion

Table = tuple[list[str], list[list]]


def pct(value: float) -> str:
  return (
    "-"
    if value is None or (isinstance(value, float) and math.isnan(value))
    else f"{100 * value:.2f}%"
  )


def num(value: float, digits: int = 3) -> str:
  return (
    "-"
    if value is None or (isinstance(value, float) and math.isnan(value))
    else f"{value:.{digits}f}"
  )


def _lookup(rows: Sequence[GroupAccuracy], group: str, value: str) -> GroupAccuracy | None:
  return next((r for r in rows if r.group == group and r.value == value), None)


def table1(
  model: str, perception: Sequence[GroupAccuracy] | None, noref: ReasoningSummary | None
) -> Table:
  columns = [
    "Model",
    "Yes-or-No",
    "What",
    "How",
    "Overall (perception)",
    "Comp.",
    "Prec.",
    "Cons.",
    "Qual.",
    "Overall (reasoning)",
  ]
  rows = []
  if perception:
    guess = ["random guess"]
    for qtype in ("Yes-or-No", "What", "How"):
      row = _lookup(perception, "question_type", qtype)
      guess.append(pct(row.random_guess) if row else "-")
    guess.append(pct(_lookup(perception, "overall", "all").random_guess))
    rows.append(guess + ["-"] * 5)
  row = [model]
  for qtype in ("Yes-or-No", "What", "How"):
    found = _lookup(perception, "question_type", qtype) if perception else None
    row.append(pct(found.accuracy) if found else "-")
  overall = _lookup(perception, "overall", "all") if perception else None
  row.append(pct(overall.accuracy) if overall else "-")
  for dimension in DIMENSIONS:
    row.append(num(noref.means[dimension]) if noref else "-")
  row.append(num(noref.overall) if noref else "-")
  rows.append(row)
  return columns, rows


def perception_breakdown_table(rows: Sequence[GroupAccuracy]) -> Table:
  columns = [
    "group",
    "value",
    "n",
    "correct",
    "accuracy",
    "95% CI",
    "accuracy (VLMEvalKit rules)",
    "random guess",
    "unparseable",
    "missing",
  ]
  return columns, [
    [
      r.group,
      r.value,
      r.n,
      r.correct,
      pct(r.accuracy),
      f"[{pct(r.ci_low)}, {pct(r.ci_high)}]",
      pct(r.accuracy_vlmevalkit),
      pct(r.random_guess),
      r.unparseable,
      r.missing,
    ]
    for r in rows
  ]


def modality_table(model: str, rows: Sequence[GroupAccuracy]) -> Table:
  """Table 7 layout: one row with our (strict) extraction, one with VLMEvalKit's rules."""
  modalities = [r for r in rows if r.group == "modality"]
  return ["Model"] + [r.value for r in modalities], [
    [model] + [pct(r.accuracy) for r in modalities],
    [f"{model} (VLMEvalKit rules)"] + [pct(r.accuracy_vlmevalkit) for r in modalities],
  ]


def disagreement_table(rows) -> Table:
  """Items where strict and VLMEvalKit extraction read different options."""
  columns = [
    "index",
    "answer",
    "prediction",
    "strict",
    "strict rule",
    "VLMEvalKit",
    "strict correct",
    "VLMEvalKit correct",
  ]
  body = []
  for d in rows:
    text = (d.prediction or "").replace("\n", " ").replace("|", "/")
    reference = d.vlmevalkit_letter or (
      "NaN" if d.vlmevalkit_extracted is None else "(raw text: no letter)"
    )
    body.append(
      [
        d.index,
        d.answer,
        text[:80] + ("..." if len(text) > 80 else ""),
        d.strict_letter or "-",
        d.strict_rule,
        reference,
        "yes" if d.correct else "no",
        "yes" if d.correct_vlmevalkit else "no",
      ]
    )
  return columns, body


def reasoning_table(summaries: Sequence[ReasoningSummary]) -> Table:
  columns = ["Group", "n items"] + [DIMENSION_TITLES[d] for d in DIMENSIONS] + ["Overall"]
  columns.append("unparsed replies C/P/Co/Q")
  paired = any(s.kind == "paired" for s in summaries)
  if paired:
    columns.append("Quality acc.")
  names = {"overall": "Overall", "fine": "Fine-grained", "coarse": "Coarse-grained"}
  rows = []
  for s in summaries:
    row = [names.get(s.group, s.group), s.n_items]
    for dimension in DIMENSIONS:
      low, high = s.ci[dimension]
      row.append(f"{num(s.means[dimension])} [{num(low)}, {num(high)}] (n={s.n_scored[dimension]})")
    row.append(num(s.overall))
    row.append("/".join(str(s.n_unparsed.get(d, 0)) for d in DIMENSIONS))
    if paired:
      row.append(pct(s.quality_accuracy_rate))
    rows.append(row)
  return columns, rows


def exclusions_table(exclusions: Sequence[Exclusion]) -> Table:
  counts = collections.Counter((e.reason) for e in exclusions)
  return ["reason", "count"], [[reason, count] for reason, count in counts.most_common()]


def restoration_rows_table(rows) -> Table:
  columns = ["task", "count", "PSNR mean", "PSNR std", "SSIM mean", "SSIM std"]
  return columns, [
    [
      r.task,
      r.count,
      num(r.psnr_mean, 2),
      num(r.psnr_std, 2),
      num(r.ssim_mean, 4),
      num(r.ssim_std, 4),
    ]
    for r in rows
  ]


def markdown(table: Table) -> str:
  columns, rows = table
  lines = ["| " + " | ".join(str(c) for c in columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)
