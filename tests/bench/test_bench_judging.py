"""Judge score parsing, the offline rule judge, and reasoning aggregation on fixtures."""

import pytest

from medq_jax.bench import reasoning
from medq_jax.bench.judge_offline import OfflineJudge, final_label, preferred_image, score_request
from medq_jax.bench.judge_types import (
  JudgeRequest,
  JudgeResponse,
  parse_judge_score,
  parse_score_vlmevalkit,
)
from medq_jax.bench.prompts import DIMENSIONS
from medq_jax.bench.schema import ReasoningItem


@pytest.mark.parametrize(
  "text,allowed,expected",
  [
    ("Score: 2", (0, 1, 2), 2.0),
    ("Score:1", (0, 1, 2), 1.0),
    ("score : 0", (0, 1, 2), 0.0),
    ("Score：2", (0, 1, 2), 2.0),  # full-width colon
    ("Score: 1.5", (0, 1, 2), 1.5),  # decimals
    ("**Score:** 2", (0, 1, 2), 2.0),
    ("The description covers most facts.\nScore: 1", (0, 1, 2), 1.0),
    ("Please only provide ... Score: \nScore: 2", (0, 1, 2), 2.0),  # last one wins
    ('{"score": 2}', (0, 1, 2), 2.0),
    ('{"Score": 0}', (0, 1, 2), 0.0),
    ("1", (0, 1, 2), 1.0),  # bare JSON number
    (" 2 ", (0, 1, 2), 2.0),
    ("Score: 3", (0, 1, 2), None),  # out of range
    ("Score: 1", (0, 2), None),  # paired quality accuracy is binary
    ("Score: 2", (0, 2), 2.0),
    ("I think it's good", (0, 1, 2), None),
    ("", (0, 1, 2), None),
    (None, (0, 1, 2), None),
    ("true", (0, 1, 2), None),
    ("Score: 10", (0, 1, 2), None),  # ten, not one
    ("Score: 2.5", (0, 1, 2), None),
    ("Score: -1", (0, 1, 2), None),
    ("2.9", (0, 1, 2), None),
    ('{"score": "2"}', (0, 1, 2), None),  # a string is not a number
  ],
)
def test_parse_judge_score(text, allowed, expected):
  assert parse_judge_score(text, tuple(float(a) for a in allowed)) == expected


# Written from VLMEvalKit's parse_score_from_response (vlmeval/dataset/medqbench_caption.py at
# e8e78f0; the paired scorer's copy is the same): rule 1 the first case-sensitive
# "Score" [:：] [0-2](.digits)?; rule 2 json.loads of the whole text, a number or
# {"score"|"Score": x} with 0 <= float(x) <= 2; rule 3 the whole text [0-2](.digits)?.
VLMEVALKIT_SCORES = [
  ("Score: 2", 2.0),  # rule 1
  ("Score:1", 1.0),
  ("Score：0", 0.0),  # full-width colon
  ("Score : 1.5", 1.5),
  ("Score: 10", 1.0),  # rule 1 reads one digit: "10" is 1
  ("Score: 2.7", 2.7),  # decimals after 2 are kept
  ("Score: 3", None),  # rule 1 fails, the text is no JSON, not a bare number
  ("score: 2", None),  # rule 1 is case-sensitive
  ("**Score:** 2", None),  # "**" between ":" and the digit
  ("Score: 1\nScore: 2", 1.0),  # the first one
  ("Reasoning... Score: 2", 2.0),
  ('{"score": 2}', 2.0),  # rule 2
  ('{"Score": 1}', 1.0),
  ('{"score": "2"}', 2.0),  # float("2")
  ('{"score": 5, "Score": 1}', 1.0),  # "score" out of range, then "Score"
  ('{"score": null}', None),  # float(None) raises: rule 2 ends, rule 3 fails
  ("true", 1.0),  # JSON true is an int in Python
  ("1.5", 1.5),  # JSON number
  ("2.9", 2.9),  # JSON number out of range, then rule 3 takes it
  (" 2 ", 2.0),
  ("02", None),  # not JSON (leading zero), rule 3 wants one digit
  ("NaN", None),  # JSON NaN fails the range test
  ("", None),
  (None, None),
  ("I think it's good", None),
]


@pytest.mark.parametrize("text,expected", VLMEVALKIT_SCORES)
def test_parse_score_vlmevalkit(text, expected):
  assert parse_score_vlmevalkit(text) == expected


def test_request_reads_its_mode():
  strict = JudgeRequest("1", "paired", "quality_accuracy", 0, "p", "g")
  vlm = JudgeRequest("1", "paired", "quality_accuracy", 0, "p", "g", "vlmevalkit")
  assert strict.parse("Score: 1") is None and vlm.parse("Score: 1") == 1.0  # binary only in strict
  assert strict.parse("Score: 10") is None and vlm.parse("Score: 10") == 1.0


GOLDEN = (
  "This is a CT scan of the abdominal region. The image exhibits moderate clarity and contrast, but "
  "the presence of significant noise reduces overall resolution. Metal artifacts are prominent, creating "
  "streaks that obscure anatomical details. Overall, the quality of this image is reject."
)
GOOD_OUTPUT = (
  "This axial CT image shows moderate noise. Severe metal-induced streak artifacts radiate across "
  "the field and obscure anatomy. Overall, the quality is reject."
)
BAD_OUTPUT = (
  "This CT scan shows clear structures with good contrast and minimal noise. No significant "
  "artifacts are visible. Overall, the image quality is good and suitable for diagnosis."
)
PAIRED_GOLDEN = (
  "The first image demonstrates excellent clarity with minimal motion artifacts. The second image "
  "exhibits severe motion artifacts, including blurring and ghosting. Overall, the first image "
  "has higher quality."
)


def _scores(kind, output, golden):
  return [score_request(JudgeRequest("1", kind, d, 0, output, golden)) for d in DIMENSIONS]


def test_offline_judge_on_paper_examples():
  # appendix A.5.2: GPT-5 agrees with the golden reasoning, BiMediX2 contradicts it
  assert _scores("noref", GOOD_OUTPUT, GOLDEN) == [2, 2, 2, 2]
  completeness, preciseness, consistency, quality = _scores("noref", BAD_OUTPUT, GOLDEN)
  assert quality == 0 and preciseness == 0 and completeness <= 1
  usable = GOOD_OUTPUT.replace("the quality is reject", "the quality is usable")
  assert _scores("noref", usable, GOLDEN)[3] == 1  # adjacent level
  qwen72 = (
    "Image 1 has lower contrast and reduced sharpness. Image 2 shows clearer anatomical details, "
    "though it contains more visible noise. Overall, Image 2 is of higher quality."
  )
  assert _scores("paired", qwen72, PAIRED_GOLDEN)[3] == 0
  medgemma = (
    "Image 1 shows clearer brain structures with less noise. Image 2 appears blurrier and grainier. "
    "Overall, Image 1 demonstrates superior clarity and quality."
  )
  assert _scores("paired", medgemma, PAIRED_GOLDEN)[3] == 2


@pytest.mark.parametrize(
  "text,label",
  [
    ("Overall, the quality of this image is usable.", "usable"),
    ("Overall, the quality of this image is [reject]", "reject"),
    ("The image is good at first glance but overall unusable.", "reject"),
    ("No conclusion here.", None),
  ],
)
def test_final_label(text, label):
  assert final_label(text) == label


@pytest.mark.parametrize(
  "text,who",
  [
    ("Overall, the first image has higher quality.", "first"),
    ("Overall, Image 2 is of higher quality.", "second"),
    ("The left image is sharper. Overall, the right image provides better quality.", "second"),
    ("Both look alike.", None),
  ],
)
def test_preferred_image(text, who):
  assert preferred_image(text) == who


def test_offline_judge_names_itself():
  judge = OfflineJudge()
  assert judge.name == "offline-rule-judge-v1" and "NOT an LLM judge" in judge.description
  [response] = judge.judge_all(
    [JudgeRequest("1", "noref", "quality_accuracy", 0, GOOD_OUTPUT, GOLDEN)]
  )
  assert response.text == "Score: 2" and response.score == 2.0


class ScriptedJudge:
  """Replies from a table {(item, dimension, round): reply text}; a missing key is a failed request."""

  name = "scripted"
  description = "scripted replies for a hand-computed fixture"

  def __init__(self, replies):
    self.replies = replies

  def judge_all(self, requests):
    out = []
    for r in requests:
      text = self.replies.get((r.item_index, r.dimension, r.round))
      score = r.parse(text)
      out.append(JudgeResponse(r, score, text, error=None if score is not None else "no score"))
    return out


def test_reasoning_aggregation_matches_hand_computation():
  items = [
    ReasoningItem("a", "paired", "g", granularity="fine"),
    ReasoningItem("b", "paired", "g", granularity="fine"),
    ReasoningItem("c", "paired", "g", granularity="coarse"),
  ]
  predictions = {"a": "p", "b": "p", "c": "p"}
  table = {
    # item a, two rounds: completeness (2, 1) -> 1.5; quality 2 both rounds
    ("a", "completeness", 0): "Score: 2",
    ("a", "completeness", 1): "Score: 1",
    ("a", "preciseness", 0): "Score: 1",
    ("a", "preciseness", 1): "Score: 1",
    ("a", "consistency", 0): "Score: 2",
    ("a", "consistency", 1): "Score: 2",
    ("a", "quality_accuracy", 0): "Score: 2",
    ("a", "quality_accuracy", 1): "Score: 2",
    # item b: round 1 of completeness malformed -> mean of the valid round only
    ("b", "completeness", 0): "Score: 0",
    ("b", "completeness", 1): "garbage",
    ("b", "preciseness", 0): "Score: 2",
    ("b", "preciseness", 1): "Score: 2",
    ("b", "consistency", 0): "Score: 1",
    ("b", "consistency", 1): "Score: 1",
    ("b", "quality_accuracy", 0): "Score: 0",
    ("b", "quality_accuracy", 1): "Score: 0",
    # item c: quality answered 1 twice (not binary) -> excluded from quality
    ("c", "completeness", 0): "Score: 2",
    ("c", "completeness", 1): "Score: 2",
    ("c", "preciseness", 0): "Score: 2",
    ("c", "preciseness", 1): "Score: 2",
    ("c", "consistency", 0): "Score: 2",
    ("c", "consistency", 1): "Score: 2",
    ("c", "quality_accuracy", 0): "Score: 1",
    ("c", "quality_accuracy", 1): "Score: 1",
  }
  scores, exclusions, responses = reasoning.score_reasoning(
    items, predictions, ScriptedJudge(table), rounds=2
  )
  assert len(responses) == 3 * 4 * 2
  by_index = {s.index: s.scores for s in scores}
  assert by_index["a"] == {
    "completeness": 1.5,
    "preciseness": 1.0,
    "consistency": 2.0,
    "quality_accuracy": 2.0,
  }
  assert by_index["b"]["completeness"] == 0.0
  assert by_index["c"]["quality_accuracy"] is None
  assert [(e.index, e.reason) for e in exclusions] == [
    ("c", "judge gave no valid quality_accuracy score (excluded)")
  ]
  rows = {s.group: s for s in reasoning.summaries(scores, "paired", n_resamples=100)}
  overall = rows["overall"]
  assert overall.means["completeness"] == pytest.approx((1.5 + 0 + 2) / 3)
  assert overall.means["preciseness"] == pytest.approx((1 + 2 + 2) / 3)
  assert overall.means["consistency"] == pytest.approx((2 + 1 + 2) / 3)
  assert overall.means["quality_accuracy"] == pytest.approx((2 + 0) / 2)
  assert overall.n_scored["quality_accuracy"] == 2
  assert overall.overall == pytest.approx(sum(overall.means.values()))
  assert overall.quality_accuracy_rate == pytest.approx(1 / 2)
  assert rows["fine"].n_items == 2 and rows["coarse"].n_items == 1
  assert rows["fine"].means["completeness"] == pytest.approx(0.75)
  assert rows["coarse"].means["completeness"] == pytest.approx(2.0)

  assert overall.n_unparsed == {
    "completeness": 1,
    "preciseness": 0,
    "consistency": 0,
    "quality_accuracy": 2,
  }


def test_vlmevalkit_mode_sends_empty_predictions_as_nan():
  items = [ReasoningItem("a", "noref", "g"), ReasoningItem("b", "noref", "g")]
  requests, exclusions = reasoning.build_requests(items, {"a": "", "b": "text"}, 1, "vlmevalkit")
  assert {(r.item_index, r.prediction) for r in requests} == {("a", "nan"), ("b", "text")}
  assert all(r.score_mode == "vlmevalkit" for r in requests)
  assert "[nan]" in next(r for r in requests if r.item_index == "a").prompt
  assert exclusions[0].reason == "empty prediction (sent to the judge as 'nan')"
  strict, excluded = reasoning.build_requests(items, {"a": "", "b": "text"}, 1)
  assert {r.item_index for r in strict} == {"b"} and "scored 0" in excluded[0].reason
  with pytest.raises(ValueError, match="score_mode"):
    reasoning.build_requests(items, {}, 1, "lenient")
