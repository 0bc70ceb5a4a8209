"""Scoring runs: items + predictions (from a file or a `BenchModel`) -> `BenchResults`.

This is the library side of ``launch/bench.py``; it parses no flags. Every item that
is left out of a score, or counted wrong for want of an answer, appears in
``BenchResults.exclusions`` with its reason.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any

from medq_jax.bench import perception, reasoning
from medq_jax.bench.items import load_mcq_items, load_reasoning_items
from medq_jax.bench.judge_types import Judge
from medq_jax.bench.model_interface import BenchModel, predict_items
from medq_jax.bench.predictions import join_predictions, read_predictions, write_predictions
from medq_jax.bench.schema import Exclusion


class BenchRunError(RuntimeError):
  """A run that produced no usable score (e.g. every judge request failed)."""


@dataclasses.dataclass
class TrackResult:
  """One track (perception, noref or paired) of a run."""

  track: str
  items_path: str
  predictions_path: str
  n_items: int
  exclusions: list[Exclusion]
  perception_outcomes: list = dataclasses.field(default_factory=list)
  perception_rows: list = dataclasses.field(default_factory=list)
  reasoning_scores: list = dataclasses.field(default_factory=list)
  reasoning_summaries: list = dataclasses.field(default_factory=list)
  reasoning_modality: list = dataclasses.field(default_factory=list)
  judge_requests: int = 0
  judge_cached: int = 0


@dataclasses.dataclass
class BenchResults:
  model: str
  judge_name: str | None
  judge_description: str | None
  tracks: dict[str, TrackResult]
  settings: dict[str, Any]

  @property
  def exclusions(self) -> list[Exclusion]:
    return [e for t in self.tracks.values() for e in t.exclusions]


def _predictions(
  items,
  predictions_path: str | None,
  model: BenchModel | None,
  out_dir: str,
  track: str,
  on_error: str,
) -> tuple[dict, list[Exclusion], str]:
  if model is not None:
    rows = predict_items(model, items)
    path = os.path.join(out_dir, f"predictions_{track}.jsonl")
    write_predictions(path, rows)
    return {r["index"]: r["prediction"] for r in rows}, [], path
  if not predictions_path:
    raise ValueError(f"{track}: give a predictions file or a model")
  predictions, exclusions = read_predictions(predictions_path, on_error=on_error)
  return predictions, exclusions, predictions_path


def score_perception(
  items_path: str,
  predictions_path: str | None = None,
  model: BenchModel | None = None,
  out_dir: str = ".",
  on_error: str = "raise",
  n_resamples: int = 1000,
  seed: int = 0,
  missing_as_wrong: bool = True,
) -> TrackResult:
  loaded = load_mcq_items(items_path, on_error=on_error, check_images=True)
  predictions, exclusions, used = _predictions(
    loaded.items, predictions_path, model, out_dir, "perception", on_error
  )
  join = join_predictions(loaded.items, predictions)
  outcomes, more = perception.score_items(
    loaded.items, predictions, missing_as_wrong=missing_as_wrong
  )
  unmatched = [e for e in join.exclusions if e.reason == "prediction for unknown index"]
  return TrackResult(
    "perception",
    items_path,
    used,
    len(loaded.items),
    loaded.exclusions + exclusions + more + unmatched,
    perception_outcomes=outcomes,
    perception_rows=perception.breakdown(outcomes, n_resamples, seed),
  )


def score_reasoning_track(
  items_path: str,
  kind: str,
  judge: Judge,
  predictions_path: str | None = None,
  model: BenchModel | None = None,
  out_dir: str = ".",
  rounds: int = 1,
  on_error: str = "raise",
  n_resamples: int = 1000,
  seed: int = 0,
  score_mode: str = "strict",
) -> TrackResult:
  loaded = load_reasoning_items(items_path, kind, on_error=on_error, check_images=True)
  predictions, exclusions, used = _predictions(
    loaded.items, predictions_path, model, out_dir, kind, on_error
  )
  join = join_predictions(loaded.items, predictions)
  scores, more, responses = reasoning.score_reasoning(
    loaded.items, predictions, judge, rounds, score_mode
  )
  check_judge_responses(kind, responses)
  unmatched = [e for e in join.exclusions if e.reason == "prediction for unknown index"]
  return TrackResult(
    kind,
    items_path,
    used,
    len(loaded.items),
    loaded.exclusions + exclusions + more + unmatched,
    reasoning_scores=scores,
    reasoning_summaries=reasoning.summaries(scores, kind, n_resamples, seed),
    reasoning_modality=reasoning.modality_summaries(scores, kind, n_resamples, seed),
    judge_requests=len(responses),
    judge_cached=sum(r.cached for r in responses),
  )


def check_judge_responses(kind: str, responses) -> None:
  """Raises BenchRunError when requests were sent and not one reply held a score."""
  if responses and all(r.score is None for r in responses):
    errors = collections.Counter(r.error or "no score in the reply" for r in responses)
    common, count = errors.most_common(1)[0]
    raise BenchRunError(
      f"{kind}: all {len(responses)} judge requests failed; most common cause ({count}x): {common}"
    )


def run(
  model_name: str,
  judge: Judge | None,
  qa: tuple[str, str | None] | None = None,
  noref: tuple[str, str | None] | None = None,
  paired: tuple[str, str | None] | None = None,
  model: BenchModel | None = None,
  out_dir: str = ".",
  rounds: int = 1,
  on_error: str = "raise",
  n_resamples: int = 1000,
  seed: int = 0,
  score_mode: str = "strict",
) -> BenchResults:
  """Scores whichever tracks are given as (items path, predictions path or None).

  ``score_mode`` is how judge replies are read (`judge_types.SCORE_MODES`); perception is
  always scored both ways."""
  tracks = {}
  if qa:
    tracks["perception"] = score_perception(
      qa[0], qa[1], model, out_dir, on_error, n_resamples, seed
    )
  for kind, spec in (("noref", noref), ("paired", paired)):
    if spec:
      if judge is None:
        raise ValueError(f"{kind} reasoning needs a judge (offline or api)")
      tracks[kind] = score_reasoning_track(
        spec[0],
        kind,
        judge,
        spec[1],
        model,
        out_dir,
        rounds,
        on_error,
        n_resamples,
        seed,
        score_mode,
      )
  settings = {
    "judge_rounds": rounds,
    "judge_score_mode": score_mode,
    "bootstrap_resamples": n_resamples,
    "seed": seed,
    "on_error": on_error,
  }
  return BenchResults(
    model_name, getattr(judge, "name", None), getattr(judge, "description", None), tracks, settings
  )
