"""Reasoning scoring: judge requests for every item, dimension and round; aggregation.

Per item and dimension the score is the mean over rounds whose reply held a valid
score; an item whose every round failed is excluded from that dimension (counted).
An item with no or an empty prediction scores 0 on all four dimensions without
asking the judge (counted). A group's Overall is the sum of its four dimension
means (0-8), as in the paper's Table 1. Paired quality accuracy is binary; its
accuracy is the share of items scored 2. Paired items are also reported per
granularity (fine / coarse).

With ``score_mode="vlmevalkit"`` the run does what VLMEvalKit's scorers do where they differ:
replies are read by `judge_types.parse_score_vlmevalkit`, placeholders are filled by two
``replace`` calls, and an empty prediction (NaN to pandas) is sent to the judge as the text
'nan' instead of scoring 0 unasked. Items absent from the predictions file score 0 in both
modes (VLMEvalKit's file always has every item). A dimension no item could be scored on has a
NaN mean (VLMEvalKit prints 0.0). Replies without a valid score are counted per dimension.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medq_jax.bench.extraction import is_missing_prediction, is_pandas_na
from medq_jax.bench.judge_types import SCORE_MODES, Judge, JudgeRequest, JudgeResponse
from medq_jax.bench.prompts import DIMENSIONS
from medq_jax.bench.schema import GRANULARITIES, UNKNOWN, Exclusion, ReasoningItem
from medq_jax.bench.stats import bootstrap_mean_ci


@dataclasses.dataclass(frozen=True)
class ItemScores:
  """Scores of one item: {dimension: mean over valid rounds, or None}."""

  index: str
  kind: str
  granularity: str
  modality: str
  scores: dict[str, float | None]
  rounds: dict[str, list[float]]
  empty_prediction: bool = False
  unparsed: dict[str, int] = dataclasses.field(default_factory=dict)  # rounds without a score


@dataclasses.dataclass(frozen=True)
class ReasoningSummary:
  """One row of a reasoning table: mean (and CI) per dimension, Overall = sum of means."""

  kind: str
  group: str
  n_items: int
  means: dict[str, float]
  ci: dict[str, tuple[float, float]]
  n_scored: dict[str, int]
  overall: float
  quality_accuracy_rate: float | None  # paired only: share of items with quality score 2
  n_unparsed: dict[str, int] = dataclasses.field(default_factory=dict)  # failed (item, round)s


def build_requests(
  items: Sequence[ReasoningItem],
  predictions: Mapping[str, Any],
  rounds: int = 1,
  score_mode: str = "strict",
) -> tuple[list[JudgeRequest], list[Exclusion]]:
  """One request per (item with a prediction, dimension, round)."""
  if score_mode not in SCORE_MODES:
    raise ValueError(f"score_mode must be one of {SCORE_MODES}, got {score_mode!r}")
  requests, exclusions = [], []
  for item in items:
    prediction = predictions.get(item.index)
    as_nan = score_mode == "vlmevalkit" and item.index in predictions and is_pandas_na(prediction)
    if as_nan:
      prediction = "nan"  # str(NaN), what VLMEvalKit sends for an empty cell
      exclusions.append(Exclusion(item.index, "empty prediction (sent to the judge as 'nan')"))
    elif is_missing_prediction(prediction):
      reason = "missing prediction" if item.index not in predictions else "empty prediction"
      exclusions.append(Exclusion(item.index, f"{reason} (scored 0 on every dimension)"))
      continue
    for dimension in DIMENSIONS:
      for round_index in range(rounds):
        requests.append(
          JudgeRequest(
            item.index,
            item.kind,
            dimension,
            round_index,
            str(prediction),
            item.description,
            score_mode,
          )
        )
  return requests, exclusions


def collect_item_scores(
  items: Sequence[ReasoningItem], responses: Sequence[JudgeResponse]
) -> tuple[list[ItemScores], list[Exclusion]]:
  """Per-item dimension scores from judge responses (pure)."""
  by_item: dict[str, dict[str, list[float]]] = collections.defaultdict(
    lambda: collections.defaultdict(list)
  )
  failures: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
  judged = set()
  for response in responses:
    request = response.request
    judged.add(request.item_index)
    if response.score is None:
      failures[(request.item_index, request.dimension)].append(response.error or "no score")
    else:
      by_item[request.item_index][request.dimension].append(response.score)
  results, exclusions = [], []
  for item in items:
    empty = item.index not in judged
    scores, rounds = {}, {}
    for dimension in DIMENSIONS:
      values = by_item[item.index][dimension] if not empty else []
      rounds[dimension] = list(values)
      if empty:
        scores[dimension] = 0.0
      elif values:
        scores[dimension] = float(np.mean(values))
      else:
        scores[dimension] = None
        errors = failures.get((item.index, dimension), ["no response"])
        exclusions.append(
          Exclusion(item.index, f"judge gave no valid {dimension} score (excluded)", errors[-1])
        )
    results.append(
      ItemScores(
        item.index,
        item.kind,
        item.granularity,
        item.modality,
        scores,
        rounds,
        empty_prediction=empty,
        unparsed={d: len(failures.get((item.index, d), [])) for d in DIMENSIONS},
      )
    )
  return results, exclusions


def summarize(
  scores: Sequence[ItemScores], kind: str, group: str, n_resamples: int = 1000, seed: int = 0
) -> ReasoningSummary:
  """Dimension means with bootstrap CIs over items; Overall = sum of the four means."""
  means, ci, n_scored = {}, {}, {}
  for dimension in DIMENSIONS:
    values = [s.scores[dimension] for s in scores if s.scores[dimension] is not None]
    interval = bootstrap_mean_ci(values, n_resamples=n_resamples, seed=seed)
    means[dimension], ci[dimension], n_scored[dimension] = (
      interval.mean,
      (interval.low, interval.high),
      interval.n,
    )
  overall = (
    float(sum(means.values())) if all(not math.isnan(m) for m in means.values()) else float("nan")
  )
  rate = None
  if kind == "paired":
    quality = [
      s.scores["quality_accuracy"] for s in scores if s.scores["quality_accuracy"] is not None
    ]
    rate = float(np.mean([q == 2.0 for q in quality])) if quality else float("nan")
  unparsed = {d: sum(s.unparsed.get(d, 0) for s in scores) for d in DIMENSIONS}
  return ReasoningSummary(kind, group, len(scores), means, ci, n_scored, overall, rate, unparsed)


def summaries(
  scores: Sequence[ItemScores], kind: str, n_resamples: int = 1000, seed: int = 0
) -> list[ReasoningSummary]:
  """Overall row, then (paired) fine- and coarse-grained rows."""
  rows = [summarize(scores, kind, "overall", n_resamples, seed)]
  if kind == "paired":
    for granularity in GRANULARITIES + (UNKNOWN,):
      subset = [s for s in scores if s.granularity == granularity]
      if subset:
        rows.append(summarize(subset, kind, granularity, n_resamples, seed))
  return rows


def modality_summaries(
  scores: Sequence[ItemScores], kind: str, n_resamples: int = 1000, seed: int = 0
) -> list[ReasoningSummary]:
  by_modality = collections.defaultdict(list)
  for score in scores:
    by_modality[score.modality].append(score)
  return [
    summarize(by_modality[m], kind, f"modality={m}", n_resamples, seed) for m in sorted(by_modality)
  ]


def score_reasoning(
  items: Sequence[ReasoningItem],
  predictions: Mapping[str, Any],
  judge: Judge,
  rounds: int = 1,
  score_mode: str = "strict",
) -> tuple[list[ItemScores], list[Exclusion], list[JudgeResponse]]:
  """Builds requests, asks the judge, collects per-item scores and every exclusion."""
  requests, exclusions = build_requests(items, predictions, rounds, score_mode)
  responses = judge.judge_all(requests)
  scores, more = collect_item_scores(items, responses)
  return scores, exclusions + more, responses
