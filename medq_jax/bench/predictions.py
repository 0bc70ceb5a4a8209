"""Reading a predictions file and joining it to items.

A predictions file has columns ``index`` and ``prediction`` (TSV, CSV, XLSX or JSONL);
VLMEvalKit result files qualify, its ``.xlsx`` included (extra columns are ignored). Joining never drops
anything silently: items without a prediction and predictions for unknown indices
are both returned so reports can count them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from medq_jax.bench.io_files import read_rows, write_rows
from medq_jax.bench.schema import BenchInputError, Exclusion


@dataclasses.dataclass
class PredictionJoin:
  """``by_index``: prediction text per item index (None when the item has none)."""

  by_index: dict[str, Any]
  missing: list[str]  # item indices without a prediction row
  unmatched: list[str]  # prediction indices that name no item
  exclusions: list[Exclusion]


def read_predictions(path: str, on_error: str = "raise") -> tuple[dict[str, Any], list[Exclusion]]:
  """Returns {index: prediction} and exclusions; duplicated indices are an error."""
  columns, rows = read_rows(path)
  missing = [c for c in ("index", "prediction") if c not in columns]
  if missing:
    raise BenchInputError(f"{path}: missing required column(s) {missing}; found columns {columns}")
  if not rows:
    raise BenchInputError(f"{path}: 0 predictions (the file has no data rows)")
  predictions: dict[str, Any] = {}
  first_row: dict[str, int] = {}
  problems, exclusions = [], []
  for row in rows:
    index = str(row.get("index", "")).strip()
    if not index:
      problems.append(f"{path}: row {row['_row']}, field 'index': empty index")
      continue
    if index in first_row:
      problems.append(
        f"{path}: row {row['_row']} (index {index!r}), field 'index': duplicated index "
        f"(first seen at row {first_row[index]})"
      )
      exclusions.append(Exclusion(index, "duplicated prediction index", problems[-1]))
      predictions.pop(index, None)
      continue
    first_row[index] = row["_row"]
    predictions[index] = row.get("prediction")
  if problems and on_error == "raise":
    raise BenchInputError(f"{len(problems)} problem(s) in {path}:\n" + "\n".join(problems[:20]))
  return predictions, exclusions


def join_predictions(items: Sequence, predictions: dict[str, Any]) -> PredictionJoin:
  """Matches predictions to items by index."""
  item_indices = [item.index for item in items]
  known = set(item_indices)
  by_index = {index: predictions.get(index) for index in item_indices}
  missing = [index for index in item_indices if index not in predictions]
  unmatched = sorted(index for index in predictions if index not in known)
  exclusions = [
    Exclusion(index, "missing prediction", "no row in the predictions file") for index in missing
  ]
  exclusions += [Exclusion(index, "prediction for unknown index", "ignored") for index in unmatched]
  return PredictionJoin(by_index, missing, unmatched, exclusions)


def write_predictions(path: str, rows: Sequence[dict[str, Any]]) -> None:
  """Writes {index, prediction, ...} rows; a prediction is a letter or free text."""
  for position, row in enumerate(rows):
    if "index" not in row or "prediction" not in row:
      raise ValueError(
        f"prediction row {position} needs 'index' and 'prediction', got {sorted(row)}"
      )
  write_rows(path, rows)
