"""A deterministic, rule-based offline judge. It is NOT an LLM judge.

It reads degradation terms, their negations, severity words and the final label
(no-reference) or preferred image (paired) from the model output and the golden
description, and scores the four dimensions with fixed rules:

* completeness: share of the reference's key facts (affirmed degradation terms,
  severity, final label / preferred image) that the output also states:
  >= 0.75 -> 2, > 0 -> 1, else 0;
* preciseness: contradictions (a term affirmed in one text and negated in the other,
  a severity two steps away, a label two levels away or an opposite preference):
  0 -> 2, 1 -> 1, more -> 0;
* consistency: the output's own problems against its own conclusion (no problems ->
  good, mild -> usable, severe -> reject; paired: the preferred image is the one
  described with fewer problems): distance 0 -> 2, 1 -> 1, else 0;
* quality accuracy: label distance 0/1/2 -> 2/1/0; paired: same preference -> 2, else 0.

It exists so everything runs offline and in tests; its scores are not comparable to
the paper's GPT-4o judge, and every report that uses it says so.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from medq_jax.bench.judge_types import JudgeRequest, JudgeResponse

NAME = "offline-rule-judge-v1"
DESCRIPTION = (
  "offline deterministic rule-based judge (degradation terms, severity and final label "
  "against the reference); NOT an LLM judge, scores are not comparable to the paper's "
  "GPT-4o judge"
)

TERMS = {
  "noise": r"nois\w*|grain\w*|mottl\w*|speckle|low[- ]dose|low[- ]count|snr",
  "blur": r"blur\w*|out of focus|unsharp|smear\w*|loss of sharpness",
  "motion": r"motion|ghost\w*",
  "undersampling": r"undersampl\w*|under-sampl\w*|alias\w*|wrap[- ]around|accelerat\w*",
  "streak": r"streak\w*|metal\w*|beam hardening|sparse[- ]view|limited[- ]angle",
  "ring": r"ring artifact\w*|ring-like",
  "contrast": r"(?:low|poor|reduced|weak|decreased) contrast",
  "illumination": r"illumination|underexpos\w*|overexpos\w*|too dark|uneven brightness",
  "resolution": r"low resolution|poor resolution|reduced resolution|pixelat\w*",
}
_NEGATION = re.compile(
  r"\b(?:no|not|without|free of|absence of|absent|lack of|lacks|minimal|"
  r"negligible|none|nor|neither)\b[^.;,]{0,40}$"
)
_NEG_SUFFIX = re.compile(r"^[- ]?(?:free|less)\b")
SEVERITY = {
  "mild": r"mild\w*|slight\w*|minor|subtle|faint|small amount",
  "moderate": r"moderate\w*|noticeable|some",
  "severe": r"sever\w*|significant\w*|prominent|heav\w*|marked\w*|strong\w*|substantial\w*|"
  r"extensive\w*|pronounced|obscur\w*|major",
}
_SEVERITY_RANK = {"none": 0, "mild": 1, "moderate": 1, "severe": 2}
LABELS = {"reject": 0, "usable": 1, "good": 2}
_LABEL_WORDS = {
  "reject": "reject",
  "rejected": "reject",
  "unusable": "reject",
  "poor": "reject",
  "non-diagnostic": "reject",
  "usable": "usable",
  "acceptable": "usable",
  "good": "good",
  "excellent": "good",
}
_FIRST = r"first|left|image 1|image a|image #1|former|1st"
_SECOND = r"second|right|image 2|image b|image #2|latter|2nd"
_COMPARATIVE = re.compile(
  r"\b(?:higher|better|superior|more suitable|preferable|clearer|sharper)\b"
)


def _sentences(text: str) -> list[str]:
  return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text.lower()) if s.strip()]


def term_polarity(text: str) -> dict[str, bool]:
  """{term group: True if affirmed, False if only negated} for groups the text mentions."""
  found: dict[str, bool] = {}
  for sentence in _sentences(text):
    for group, pattern in TERMS.items():
      for match in re.finditer(rf"\b(?:{pattern})", sentence):
        negated = bool(
          _NEGATION.search(sentence[: match.start()]) or _NEG_SUFFIX.match(sentence[match.end() :])
        )
        found[group] = found.get(group, False) or not negated
  return found


def severity(text: str) -> str:
  """The strongest severity word among sentences that affirm a degradation; 'none' if none."""
  best = "none"
  for sentence in _sentences(text):
    if not any(term_polarity(sentence).values()) and not _affirms_artifact(sentence):
      continue
    for level in ("severe", "moderate", "mild"):
      if re.search(rf"\b(?:{SEVERITY[level]})\b", sentence):
        if _SEVERITY_RANK[level] > _SEVERITY_RANK[best]:
          best = level
        break
  if best == "none" and any(term_polarity(text).values()):
    best = "moderate"
  return best


def _affirms_artifact(sentence: str) -> bool:
  for match in re.finditer(r"\bartifact", sentence):
    if not _NEGATION.search(sentence[: match.start()]):
      return True
  return False


def final_label(text: str) -> str | None:
  """'Overall, the quality of this image is usable.' -> 'usable'; the last label word wins."""
  lowered = text.lower()
  match = re.findall(r"quality of this image is\W*(good|usable|reject)", lowered)
  if match:
    return match[-1]
  words = re.findall(
    r"\b(non-diagnostic|unusable|rejected|reject|usable|acceptable|excellent|good|poor)\b", lowered
  )
  return _LABEL_WORDS[words[-1]] if words else None


def preferred_image(text: str) -> str | None:
  """'first' or 'second': which image the conclusion says has higher quality."""
  for sentence in reversed(_sentences(text)):
    comparative = _COMPARATIVE.search(sentence)
    if not comparative:
      continue
    mentions = [
      (m.start(), "first" if m.group(1) else "second")
      for m in re.finditer(rf"\b(?:({_FIRST})|({_SECOND}))\b", sentence)
    ]
    before = [who for start, who in mentions if start < comparative.start()]
    after = [who for start, who in mentions if start >= comparative.start()]
    if before:
      return before[-1]
    if after:
      return after[0]
  return None


def _problems_per_image(text: str) -> dict[str, int]:
  counts = {"first": 0, "second": 0}
  for sentence in _sentences(text):
    who = re.search(rf"\b(?:({_FIRST})|({_SECOND}))\b", sentence)
    if who and not _COMPARATIVE.search(sentence):
      counts["first" if who.group(1) else "second"] += sum(term_polarity(sentence).values())
  return counts


def _level_score(distance: int) -> int:
  return {0: 2, 1: 1}.get(distance, 0)


def score_request(request: JudgeRequest) -> int:
  """The rule-based score (0, 1 or 2) of one request."""
  output, reference = request.prediction, request.reference
  out_terms, ref_terms = term_polarity(output), term_polarity(reference)
  paired = request.kind == "paired"
  out_conclusion = preferred_image(output) if paired else final_label(output)
  ref_conclusion = preferred_image(reference) if paired else final_label(reference)
  if request.dimension == "quality_accuracy":
    if out_conclusion is None or ref_conclusion is None:
      return 0
    if paired:
      return 2 if out_conclusion == ref_conclusion else 0
    return _level_score(abs(LABELS[out_conclusion] - LABELS[ref_conclusion]))
  if request.dimension == "completeness":
    facts = [("term", g) for g, affirmed in ref_terms.items() if affirmed]
    if not paired and severity(reference) != "none":
      facts.append(("severity", severity(reference)))
    if ref_conclusion is not None:
      facts.append(("conclusion", ref_conclusion))
    if not facts:
      return 0
    covered = sum(
      1
      for kind, value in facts
      if (kind == "term" and out_terms.get(value))
      or (kind == "severity" and _SEVERITY_RANK[severity(output)] == _SEVERITY_RANK[value])
      or (kind == "conclusion" and out_conclusion == value)
    )
    share = covered / len(facts)
    return 2 if share >= 0.75 else (1 if share > 0 else 0)
  if request.dimension == "preciseness":
    contradictions = sum(1 for g in set(out_terms) & set(ref_terms) if out_terms[g] != ref_terms[g])
    if not paired:
      ref_severity = severity(reference) if any(ref_terms.values()) else "none"
      if abs(_SEVERITY_RANK[severity(output)] - _SEVERITY_RANK[ref_severity]) == 2:
        contradictions += 1
      if (
        out_conclusion
        and ref_conclusion
        and abs(LABELS[out_conclusion] - LABELS[ref_conclusion]) == 2
      ):
        contradictions += 1
    elif out_conclusion and ref_conclusion and out_conclusion != ref_conclusion:
      contradictions += 1
    return {0: 2, 1: 1}.get(contradictions, 0)
  if request.dimension == "consistency":
    if out_conclusion is None:
      return 0
    if paired:
      problems = _problems_per_image(output)
      other = "second" if out_conclusion == "first" else "first"
      return 2 if problems[out_conclusion] <= problems[other] else 1
    expected = {"none": "good", "mild": "usable", "moderate": "usable", "severe": "reject"}[
      severity(output)
    ]
    return _level_score(abs(LABELS[expected] - LABELS[out_conclusion]))
  raise ValueError(f"unknown dimension {request.dimension!r}")


class OfflineJudge:
  """Rule-based judge with the `Judge` interface; replies look like an LLM's ('Score: N')."""

  name = NAME
  description = DESCRIPTION

  def judge_all(self, requests: Sequence[JudgeRequest]) -> list[JudgeResponse]:
    responses = []
    for request in requests:
      text = f"Score: {score_request(request)}"
      responses.append(JudgeResponse(request, request.parse(text), text))
    return responses
