"""What every judge consumes and produces, and how a judge's reply becomes a score.

Two score readers, chosen by ``config.judge.score_mode``:

* ``strict`` (default, `parse_judge_score`): the last ``Score: N`` (any case, either colon,
  ``**Score:** N``), else a JSON number or ``{"score": N}``, else a bare number; a value
  outside the dimension's scale is rejected ("Score: 10" is not 1; paired quality accuracy
  takes only 0 or 2);
* ``vlmevalkit`` (`parse_score_vlmevalkit`): VLMEvalKit's ``parse_score_from_response``
  (vlmeval/dataset/medqbench_caption.py) rule for rule, quirks included.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from typing import Protocol

from medq_jax.bench.prompts import judge_prompt

SCORE_MODES = ("strict", "vlmevalkit")
_SCORE = re.compile(r"Score\s*\**\s*[:：]\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_BARE = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*\.?\s*")
# VLMEvalKit's two patterns, as written there (case-sensitive "Score"; one digit 0-2, decimals).
_VLMEVALKIT_SCORE = re.compile(r"Score\s*[:：]\s*([0-2](?:\.\d+)?)")
_VLMEVALKIT_BARE = re.compile(r"\s*([0-2](?:\.\d+)?)\s*")


@dataclasses.dataclass(frozen=True)
class JudgeRequest:
  """One (item, dimension, round) to be scored."""

  item_index: str
  kind: str  # "noref" or "paired"
  dimension: str  # one of prompts.DIMENSIONS
  round: int
  prediction: str  # the model's description ([MLLM DESC])
  reference: str  # the golden description ([GOLDEN DESC])
  score_mode: str = "strict"  # one of SCORE_MODES: how the reply is read, how the prompt is filled

  @property
  def prompt(self) -> str:
    return judge_prompt(
      self.kind,
      self.dimension,
      self.prediction,
      self.reference,
      vlmevalkit=self.score_mode == "vlmevalkit",
    )

  def parse(self, text: str | None) -> float | None:
    """The score in a reply under this request's mode, or None."""
    if self.score_mode == "vlmevalkit":
      return parse_score_vlmevalkit(text)
    return parse_judge_score(text, self.allowed_scores)

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

  Values outside [min(allowed), max(allowed)] are rejected, whole numbers included ("Score:
  10" is 10, not 1); for a binary scale (allowed == (0, 2)) only 0 and 2 are accepted. The last
  'Score:' wins, so a judge that restates the format before answering is read correctly.
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


def parse_score_vlmevalkit(resp) -> float | None:
  """VLMEvalKit's ``parse_score_from_response``, quirks included. In order, on the stripped text:

  1. the first case-sensitive ``Score`` + ``:``/``：`` + one digit 0-2 with optional decimals:
     "Score: 10" is 1.0, "Score: 2.7" is 2.7, "score: 2" and "**Score:** 2" do not match;
  2. the whole text as JSON: a number in [0, 2] (``true`` is 1.0), or an object whose
     ``score`` then ``Score`` value converts with ``float`` into [0, 2] (a key whose value does
     not convert ends this rule);
  3. the whole text one digit 0-2 with optional decimals ("2.9" is 2.9);
  4. otherwise None.
  """
  text = str(resp).strip()
  match = _VLMEVALKIT_SCORE.search(text)
  if match:
    return float(match.group(1))
  try:
    value = json.loads(text)
    if isinstance(value, (int, float)) and 0 <= float(value) <= 2:
      return float(value)
    if isinstance(value, dict):
      for key in ("score", "Score"):
        if key in value and 0 <= float(value[key]) <= 2:
          return float(value[key])
  except Exception:  # as VLMEvalKit: any failure of this rule falls through to the next
    pass
  match = _VLMEVALKIT_BARE.fullmatch(text)
  return float(match.group(1)) if match else None
