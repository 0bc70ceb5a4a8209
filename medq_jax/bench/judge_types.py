"""What every judge consumes and produces, and how a judge's reply becomes a score."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from typing import Protocol

from medq_jax.bench.prompts import judge_prompt

_SCORE = re.compile(r"Score\s*[:：]\s*\**\s*([0-9](?:\.\d+)?)", re.IGNORECASE)
_BARE = re.compile(r"\s*([0-9](?:\.\d+)?)\s*\.?\s*")


@dataclasses.dataclass(frozen=True)
class JudgeRequest:
  """One (item, dimension, round) to be scored."""

  item_index: str
  kind: str  # "noref" or "paired"
  dimension: str  # one of prompts.DIMENSIONS
  round: int
  prediction: str  # the model's description ([MLLM DESC])
  reference: str  # the golden description ([GOLDEN DESC])

  @property
  def prompt(self) -> str:
    return judge_prompt(self.kind, self.dimension, self.prediction, self.reference)

  @property
  def allowed_scores(self) -> tuple[float, ...]:
    """Paired quality accuracy is binary (0 or 2); every other dimension is 0, 1 or 2."""
    if self.kind == "paired" and self.dimension == "quality_accuracy":
      return (0.0, 2.0)
    return (0.0, 1.0, 2.0)


@dataclasses.dataclass(frozen=True)
class JudgeResponse:
  """The judge's raw reply and parsed score (None with ``error`` when it failed)."""

  request: JudgeRequest
  score: float | None
  text: str | None = None
  error: str | None = None
  cached: bool = False


class Judge(Protocol):
  """A judge scores many requests; ``name`` and ``description`` go into every report."""

  name: str
  description: str

  def judge_all(self, requests: Sequence[JudgeRequest]) -> list[JudgeResponse]: ...


def parse_judge_score(text: str | None, allowed: Sequence[float] = (0.0, 1.0, 2.0)) -> float | None:
  """'Score: 2', 'score：1.5', '**Score:** 2', '{"score": 1}', '2' -> float; else None.

  Values outside [min(allowed), max(allowed)] are rejected; for a binary scale
  (allowed == (0, 2)) only 0 and 2 are accepted. The last 'Score:' wins, so a judge
  that restates the format before answering is read correctly.
  """
  if text is None:
    return None
  body = str(text).strip()
  value = None
  matches = _SCORE.findall(body)
  if matches:
    value = float(matches[-1])
  else:
    try:
      parsed = json.loads(body)
      if isinstance(parsed, dict):
        parsed = next((parsed[k] for k in ("score", "Score", "SCORE") if k in parsed), None)
      if isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
        value = float(parsed)
    except (json.JSONDecodeError, TypeError, ValueError):
      match = _BARE.fullmatch(body)
      if match:
        value = float(match.group(1))
  if value is None:
    return None
  if set(allowed) == {0.0, 2.0}:
    return value if value in (0.0, 2.0) else None
  return value if min(allowed) <= value <= max(allowed) else None
