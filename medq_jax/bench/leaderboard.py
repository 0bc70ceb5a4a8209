"""The published MedQ-Bench leaderboard beside a scored model, in one table per track.

The rows come from the MedQ-Bench README's leaderboard (shipped as ``medqbench_leaderboard.csv``,
a copy of shared/anchors/medqbench_leaderboard_from_README.csv): columns ``task`` (perception_test,
noref_reasoning_test, comparison_reasoning_test), ``model``, ``col1``-``col4`` (Yes-or-No / What /
How accuracy %, or Comp. / Prec. / Cons. / Qual. 0-2), ``overall`` and ``notes``. Our model's row
is computed on whatever items were scored (test split or not); the table says which.
"""

from __future__ import annotations

import math
import os

from medq_jax.bench.io_files import read_rows
from medq_jax.bench.schema import BenchInputError

BUILTIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "medqbench_leaderboard.csv")
TASKS = {
  "perception": ("perception_test", ["Yes-or-No", "What", "How"]),
  "noref": ("noref_reasoning_test", ["Comp.", "Prec.", "Cons.", "Qual."]),
  "paired": ("comparison_reasoning_test", ["Comp.", "Prec.", "Cons.", "Qual."]),
}
_REQUIRED = ("task", "model", "col1", "col2", "col3", "col4", "overall")


def _number(text: str, where: str) -> float | None:
  text = (text or "").strip()
  if not text:
    return None
  try:
    return float(text)
  except ValueError:
    raise BenchInputError(f"{where}: {text!r} is not a number") from None


def load(path: str) -> dict[str, list[tuple[str, list[float | None], float | None]]]:
  """{track: [(model, [col values], overall)]} from a leaderboard CSV."""
  columns, rows = read_rows(path)
  missing = [c for c in _REQUIRED if c not in columns]
  if missing:
    raise BenchInputError(f"{path}: missing required column(s) {missing}; found {columns}")
  by_task = {task: track for track, (task, _) in TASKS.items()}
  out: dict[str, list] = {track: [] for track in TASKS}
  for row in rows:
    where = f"{path}: row {row['_row']}"
    track = by_task.get(str(row["task"]).strip())
    if track is None:
      continue
    values = [_number(row[f"col{i}"], f"{where}, field 'col{i}'") for i in (1, 2, 3, 4)]
    n = len(TASKS[track][1])
    out[track].append((str(row["model"]).strip(), values[:n], _number(row["overall"], where)))
  return out


def table(track: str, published, ours):
  """(columns, rows): the published rows and ours ([(name, values, overall, source)]) in one
  ranking by Overall (missing last)."""
  headers = TASKS[track][1]
  percent = track == "perception"
  rows = [(name, vals, total, "published") for name, vals, total in published] + list(ours)

  def key(row):
    total = row[2]
    return -total if total is not None and not math.isnan(total) else math.inf

  def fmt(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
      return "-"
    return f"{value:.2f}" if percent else f"{value:.3f}"

  columns = ["rank", "Model"] + headers + ["Overall", "source"]
  body = []
  for rank, (name, vals, total, source) in enumerate(sorted(rows, key=key), start=1):
    body.append([rank, name] + [fmt(v) for v in vals] + [fmt(total), source])
  return columns, body
