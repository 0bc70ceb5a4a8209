"""Human-judge alignment: quadratic weighted Cohen's kappa, accuracy, confusion (scikit-learn).

Human scores come from a CSV in long format, one row per (item, dimension):

    index,dimension,human_score[,judge_score]

``dimension`` is one of completeness, preciseness, consistency, quality_accuracy.
When ``judge_score`` is absent the judge's per-item scores from a scoring run
(``reasoning_items.jsonl``) are joined by (index, dimension). Judge scores averaged
over rounds are rounded to the nearest integer before comparison.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import sklearn.exceptions
import sklearn.metrics

from medq_jax.bench.io_files import read_rows
from medq_jax.bench.prompts import DIMENSIONS
from medq_jax.bench.schema import BenchInputError

SCALE = (0, 1, 2)


def confusion_matrix(
  rater_a: Sequence[int], rater_b: Sequence[int], labels: Sequence[int] = SCALE
) -> np.ndarray:
  """[k, k] counts; rows are rater_a's label, columns rater_b's (scikit-learn's)."""
  return sklearn.metrics.confusion_matrix(rater_a, rater_b, labels=list(labels))


def quadratic_weighted_kappa(
  rater_a: Sequence[int], rater_b: Sequence[int], labels: Sequence[int] | None = None
) -> float:
  """kappa_w = 1 - sum(w O) / sum(w E), w_ij = (i-j)^2/(k-1)^2 (paper Eq. 1), by scikit-learn.

  ``labels`` defaults to the sorted union of observed values (as scikit-learn does).
  Returns NaN when kappa is undefined: expected disagreement is zero (e.g. both raters
  constant and equal) or fewer than two labels.
  """
  with warnings.catch_warnings():  # undefined kappa is reported as NaN, not as a warning
    warnings.simplefilter("ignore", sklearn.exceptions.UndefinedMetricWarning)
    warnings.filterwarnings("ignore", message="A single label was found", category=UserWarning)
    return float(
      sklearn.metrics.cohen_kappa_score(
        rater_a,
        rater_b,
        labels=None if labels is None else list(labels),
        weights="quadratic",
        replace_undefined_by=np.nan,
      )
    )


@dataclasses.dataclass(frozen=True)
class DimensionAlignment:
  dimension: str
  n: int
  kappa: float
  accuracy: float
  confusion: np.ndarray  # [3, 3], rows human, columns judge
  recall_per_class: tuple  # human class -> share the judge matched


def load_pairs(
  csv_path: str, judge_items_path: str | None = None
) -> dict[str, tuple[list[int], list[int]]]:
  """{dimension: (human scores, judge scores)} from the CSV (and judge per-item file)."""
  columns, rows = read_rows(csv_path)
  missing = [c for c in ("index", "dimension", "human_score") if c not in columns]
  if missing:
    raise BenchInputError(f"{csv_path}: missing required column(s) {missing}; found {columns}")
  judge_lookup: dict[tuple[str, str], float] = {}
  if "judge_score" not in columns:
    if not judge_items_path:
      raise BenchInputError(
        f"{csv_path}: no 'judge_score' column; pass the judge's per-item "
        "scores (reasoning_items.jsonl from a scoring run)"
      )
    with open(judge_items_path, encoding="utf-8") as handle:
      for line in handle:
        if line.strip():
          record = json.loads(line)
          for dimension, value in record["scores"].items():
            if value is not None:
              judge_lookup[(str(record["index"]), dimension)] = value
  pairs: dict[str, tuple[list[int], list[int]]] = collections.defaultdict(lambda: ([], []))
  seen = set()
  for row in rows:
    where = f"{csv_path}: row {row['_row']} (index {row.get('index')!r})"
    index, dimension = str(row["index"]).strip(), str(row["dimension"]).strip().lower()
    if dimension not in DIMENSIONS:
      raise BenchInputError(
        f"{where}, field 'dimension': unknown dimension {dimension!r}; expected one of {DIMENSIONS}"
      )
    if (index, dimension) in seen:
      raise BenchInputError(f"{where}: duplicated (index, dimension) = ({index}, {dimension})")
    seen.add((index, dimension))
    human = _score(row["human_score"], f"{where}, field 'human_score'")
    if "judge_score" in columns:
      judge = _score(row["judge_score"], f"{where}, field 'judge_score'")
    elif (index, dimension) in judge_lookup:
      judge = int(round(judge_lookup[(index, dimension)]))
    else:
      raise BenchInputError(
        f"{where}: no judge score for ({index}, {dimension}) in {judge_items_path}"
      )
    pairs[dimension][0].append(human)
    pairs[dimension][1].append(judge)
  return dict(pairs)


def _score(value, where: str) -> int:
  try:
    number = float(str(value).strip())
  except ValueError:
    raise BenchInputError(f"{where}: {value!r} is not a number") from None
  if number not in SCALE:
    raise BenchInputError(f"{where}: score {value!r} is not one of {SCALE}")
  return int(number)


def align(pairs: Mapping[str, tuple[Sequence[int], Sequence[int]]]) -> list[DimensionAlignment]:
  """Per-dimension kappa (on the fixed 0-2 scale), accuracy and confusion matrix."""
  results = []
  for dimension in DIMENSIONS:
    if dimension not in pairs:
      continue
    human, judge = pairs[dimension]
    matrix = confusion_matrix(human, judge)
    totals = matrix.sum(axis=1)
    recall = tuple(
      float(matrix[i, i] / totals[i]) if totals[i] else float("nan") for i in range(len(SCALE))
    )
    results.append(
      DimensionAlignment(
        dimension,
        len(human),
        quadratic_weighted_kappa(human, judge, labels=SCALE),
        float(np.mean(np.asarray(human) == np.asarray(judge))),
        matrix,
        recall,
      )
    )
  return results


def kappa_undefined_reason(result: DimensionAlignment) -> str | None:
  """Why kappa is undefined (None when it is defined): with quadratic weights on a fixed scale
  the expected disagreement is zero only when both raters give every item one same score."""
  if not math.isnan(result.kappa):
    return None
  if result.n == 0:
    return "no (human, judge) pairs"
  human = result.confusion.sum(axis=1)
  judge = result.confusion.sum(axis=0)
  used_h = [SCALE[i] for i in range(len(SCALE)) if human[i]]
  used_j = [SCALE[j] for j in range(len(SCALE)) if judge[j]]
  return (
    f"expected disagreement is 0: the human scores are all {used_h} and the judge's all "
    f"{used_j}, so chance agreement is certain and kappa is 0/0"
  )


def plot_confusion(result: DimensionAlignment, path: str) -> str:
  """Writes one confusion-matrix PNG (human rows vs judge columns) and returns its path."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  figure, axis = plt.subplots(figsize=(3.6, 3.2), dpi=120)
  image = axis.imshow(result.confusion, cmap="Blues")
  for i in range(len(SCALE)):
    for j in range(len(SCALE)):
      axis.text(j, i, str(result.confusion[i, j]), ha="center", va="center")
  axis.set_xticks(range(len(SCALE)), [str(s) for s in SCALE])
  axis.set_yticks(range(len(SCALE)), [str(s) for s in SCALE])
  axis.set_xlabel("judge score")
  axis.set_ylabel("human score")
  kappa = "undefined" if math.isnan(result.kappa) else f"{result.kappa:.3f}"
  axis.set_title(f"{result.dimension}\nacc {result.accuracy:.1%}, kappa_w {kappa}", fontsize=9)
  figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="items")
  figure.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path)
  plt.close(figure)
  return path
