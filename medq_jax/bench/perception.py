"""Perception (multiple-choice) scoring: per-item outcomes and grouped accuracy.

Accuracy is correct / scored items, where unparseable answers and (by default)
items without any prediction count as wrong, as in the reference scorer whose
denominator is every row. Every item is scored twice: by our `strict` extraction (the
reported accuracy) and by VLMEvalKit's rules (`vlmevalkit`, the number VLMEvalKit prints);
`disagreements` lists the items where the two read different options. The random-guess baseline of a group is the mean over its
items of 1 / (number of options), so Yes/No items contribute 50 % and four-option
items 25 %.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from medq_jax.bench.extraction import (
  extract_option,
  extract_option_vlmevalkit,
  vlmevalkit_correct,
  vlmevalkit_letter,
)
from medq_jax.bench.schema import (
  DEGRADATION_LEVELS,
  QUESTION_TYPES,
  SCOPES,
  UNKNOWN,
  Exclusion,
  McqItem,
)
from medq_jax.bench.stats import bootstrap_mean_ci

BREAKDOWNS = ("question_type", "modality", "degradation_level", "scope")
_ORDER = {"question_type": QUESTION_TYPES, "degradation_level": DEGRADATION_LEVELS, "scope": SCOPES}


@dataclasses.dataclass(frozen=True)
class McqOutcome:
  """Scoring of one item. ``letter`` is None when unparseable or missing."""

  index: str
  answer: str
  letter: str | None
  rule: str
  correct: bool
  correct_vlmevalkit: bool
  n_options: int
  question_type: str
  modality: str
  degradation_level: str
  scope: str
  missing: bool = False
  prediction: str | None = None  # the raw answer text (None when missing or NaN)
  vlmevalkit_extracted: str | None = None  # VLMEvalKit's reading: a letter, the text, None = NaN


@dataclasses.dataclass(frozen=True)
class GroupAccuracy:
  """Accuracy of one group with its bootstrap CI and random-guess baseline (fractions)."""

  group: str
  value: str
  n: int
  correct: int
  accuracy: float
  ci_low: float
  ci_high: float
  random_guess: float
  unparseable: int
  missing: int
  correct_vlmevalkit: int = 0
  accuracy_vlmevalkit: float = float("nan")  # VLMEvalKit's rules on the same items


def score_item(item: McqItem, prediction: Any, missing: bool = False) -> McqOutcome:
  """Pure: one item and its raw prediction -> outcome."""
  if missing:
    letter, rule = None, "missing prediction"
  else:
    extraction = extract_option(prediction, item.options)
    letter, rule = extraction.letter, extraction.rule
  reference = None if missing else extract_option_vlmevalkit(prediction)
  return McqOutcome(
    index=item.index,
    answer=item.answer,
    letter=letter,
    rule=rule,
    correct=letter == item.answer,
    correct_vlmevalkit=not missing and vlmevalkit_correct(reference, item.answer),
    n_options=item.n_options,
    question_type=item.question_type,
    modality=item.modality,
    degradation_level=item.degradation_level,
    scope=item.scope,
    missing=missing,
    prediction=None if missing or prediction is None else str(prediction),
    vlmevalkit_extracted=reference,
  )


def score_items(
  items: Sequence[McqItem], predictions: Mapping[str, Any], missing_as_wrong: bool = True
) -> tuple[list[McqOutcome], list[Exclusion]]:
  """Scores every item. Items absent from ``predictions`` count as wrong (and are listed)
  unless ``missing_as_wrong`` is False, in which case they are excluded (and listed)."""
  outcomes, exclusions = [], []
  for item in items:
    if item.index not in predictions:
      if missing_as_wrong:
        outcomes.append(score_item(item, None, missing=True))
        exclusions.append(Exclusion(item.index, "missing prediction (counted wrong)"))
      else:
        exclusions.append(Exclusion(item.index, "missing prediction (excluded)"))
      continue
    outcome = score_item(item, predictions[item.index])
    if outcome.letter is None:
      exclusions.append(Exclusion(item.index, "unparseable answer (counted wrong)", outcome.rule))
    outcomes.append(outcome)
  return outcomes, exclusions


def group_accuracy(
  outcomes: Sequence[McqOutcome], group: str, value: str, n_resamples: int = 1000, seed: int = 0
) -> GroupAccuracy:
  correct = np.array([o.correct for o in outcomes], dtype=np.float64)
  correct_vlmevalkit = sum(o.correct_vlmevalkit for o in outcomes)
  ci = bootstrap_mean_ci(correct, n_resamples=n_resamples, seed=seed)
  guess = float(np.mean([1.0 / o.n_options for o in outcomes])) if outcomes else float("nan")
  return GroupAccuracy(
    group=group,
    value=value,
    n=len(outcomes),
    correct=int(correct.sum()),
    accuracy=ci.mean,
    ci_low=ci.low,
    ci_high=ci.high,
    random_guess=guess,
    unparseable=sum(o.letter is None and not o.missing for o in outcomes),
    missing=sum(o.missing for o in outcomes),
    correct_vlmevalkit=correct_vlmevalkit,
    accuracy_vlmevalkit=correct_vlmevalkit / len(outcomes) if outcomes else float("nan"),
  )


def _ordered_values(group: str, values: Iterable[str]) -> list[str]:
  present = set(values)
  known = [v for v in _ORDER.get(group, ()) if v in present]
  rest = sorted(v for v in present if v not in known and v != UNKNOWN)
  return known + rest + ([UNKNOWN] if UNKNOWN in present else [])


def breakdown(
  outcomes: Sequence[McqOutcome], n_resamples: int = 1000, seed: int = 0
) -> list[GroupAccuracy]:
  """Overall, then per question type, modality, degradation level and scope."""
  rows = [group_accuracy(outcomes, "overall", "all", n_resamples, seed)]
  for group in BREAKDOWNS:
    by_value = collections.defaultdict(list)
    for outcome in outcomes:
      by_value[getattr(outcome, group)].append(outcome)
    for value in _ordered_values(group, by_value):
      rows.append(group_accuracy(by_value[value], group, value, n_resamples, seed))
  return rows


def unparseable_reasons(outcomes: Sequence[McqOutcome]) -> dict[str, int]:
  """Counts of why answers could not be read (rule text of unparsed outcomes)."""
  counts = collections.Counter(o.rule for o in outcomes if o.letter is None)
  return dict(counts.most_common())


def vlmevalkit_accuracy(outcomes: Sequence[McqOutcome]) -> float:
  """Overall accuracy under the reference scorer's extraction rules."""
  return float(np.mean([o.correct_vlmevalkit for o in outcomes])) if outcomes else float("nan")


@dataclasses.dataclass(frozen=True)
class Disagreement:
  """An item the two extraction modes read differently (``None``: no option)."""

  index: str
  answer: str
  prediction: str | None
  strict_letter: str | None
  strict_rule: str
  vlmevalkit_letter: str | None
  vlmevalkit_extracted: str | None
  correct: bool
  correct_vlmevalkit: bool


def disagreements(outcomes: Sequence[McqOutcome]) -> list[Disagreement]:
  """Items (with a prediction) where strict and VLMEvalKit extraction pick different options."""
  rows = []
  for o in outcomes:
    reference = vlmevalkit_letter(o.vlmevalkit_extracted)
    if o.missing or o.letter == reference:
      continue
    rows.append(
      Disagreement(
        o.index,
        o.answer,
        o.prediction,
        o.letter,
        o.rule,
        reference,
        o.vlmevalkit_extracted,
        o.correct,
        o.correct_vlmevalkit,
      )
    )
  return rows
