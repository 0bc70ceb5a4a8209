"""Perception scoring against hand-computed fixtures, and bootstrap CI behaviour."""

import numpy as np
import pytest

from medq_jax.bench import perception
from medq_jax.bench.items import load_mcq_items
from medq_jax.bench.stats import bootstrap_mean_ci

YN = {"A": "Yes", "B": "No"}
HOW = {"A": "Good", "B": "Usable", "C": "Reject"}
WHAT = {
  "A": "Motion artifacts",
  "B": "Undersampling artifacts",
  "C": "Metal artifacts",
  "D": "Noise",
}


def _row(index, options, answer, qtype, modality, level, scope):
  row = {
    "index": index,
    "question": f"Question {index}?",
    "answer": answer,
    "modality": modality,
    "question_type": qtype,
    "degradation_level": level,
    "question_scope": scope,
  }
  row.update(options)
  return row


@pytest.fixture
def fixture_items(write_qa):
  rows = [
    _row("1", YN, "A", "Yes-or-No", "CT", "none", "general"),
    _row("2", YN, "1", "Yes-or-No", "MRI", "mild", "modality-specific"),  # answer given as 1 -> B
    _row("3", HOW, "C", "How", "CT", "severe", "general"),
    _row("4", HOW, "B", "How", "MRI", "mild", "general"),
    _row("5", WHAT, "D", "What", "MRI", "severe", "modality-specific"),
    _row("6", WHAT, "B", "What", "CT", "mild", "modality-specific"),
  ]
  return load_mcq_items(write_qa(rows)).items


PREDICTIONS = {
  "1": "Yes",  # correct
  "2": "A. Yes",  # wrong
  "3": "The answer is C",  # correct
  "4": "I am not sure.",  # unparseable -> wrong
  "5": "Noise",  # correct (option text)
  # "6" missing -> wrong, counted
}


def test_overall_and_groups_match_hand_computation(fixture_items):
  outcomes, exclusions = perception.score_items(fixture_items, PREDICTIONS)
  rows = {(r.group, r.value): r for r in perception.breakdown(outcomes, n_resamples=200)}
  assert rows[("overall", "all")].correct == 3 and rows[("overall", "all")].n == 6
  assert rows[("overall", "all")].accuracy == pytest.approx(3 / 6)
  # random guess: mean of 1/options = (1/2 + 1/2 + 1/3 + 1/3 + 1/4 + 1/4) / 6
  assert rows[("overall", "all")].random_guess == pytest.approx(
    (1 / 2 + 1 / 2 + 1 / 3 + 1 / 3 + 1 / 4 + 1 / 4) / 6
  )
  assert rows[("question_type", "Yes-or-No")].accuracy == pytest.approx(1 / 2)
  assert rows[("question_type", "How")].accuracy == pytest.approx(1 / 2)
  assert rows[("question_type", "What")].accuracy == pytest.approx(1 / 2)
  assert rows[("modality", "CT")].accuracy == pytest.approx(2 / 3)  # items 1, 3 right; 6 missing
  assert rows[("modality", "MRI")].accuracy == pytest.approx(1 / 3)  # item 5 right
  assert rows[("degradation_level", "mild")].accuracy == pytest.approx(0 / 3)
  assert rows[("degradation_level", "severe")].accuracy == pytest.approx(2 / 2)
  assert rows[("degradation_level", "none")].accuracy == pytest.approx(1 / 1)
  assert rows[("scope", "general")].accuracy == pytest.approx(2 / 3)
  assert rows[("scope", "modality-specific")].accuracy == pytest.approx(1 / 3)
  assert rows[("overall", "all")].unparseable == 1 and rows[("overall", "all")].missing == 1
  reasons = sorted(e.reason for e in exclusions)
  assert reasons == ["missing prediction (counted wrong)", "unparseable answer (counted wrong)"]


def test_missing_can_be_excluded_instead(fixture_items):
  outcomes, exclusions = perception.score_items(fixture_items, PREDICTIONS, missing_as_wrong=False)
  assert len(outcomes) == 5
  assert perception.group_accuracy(
    outcomes, "overall", "all", n_resamples=0
  ).accuracy == pytest.approx(3 / 5)
  assert any(e.index == "6" and "excluded" in e.reason for e in exclusions)


def test_question_type_is_inferred_when_column_absent(write_qa):
  rows = [
    {"index": "1", "question": "Is the image clear?", "A": "Yes", "B": "No", "answer": "A"},
    {
      "index": "2",
      "question": "What artifact is present?",
      "A": "Noise",
      "B": "Blur",
      "C": "Motion",
      "answer": "B",
    },
    {
      "index": "3",
      "question": "How would you rate the quality?",
      "A": "Good",
      "B": "Reject",
      "answer": "B",
    },
  ]
  items = load_mcq_items(write_qa(rows)).items
  assert [(i.question_type, i.question_type_source) for i in items] == [
    ("Yes-or-No", "inferred"),
    ("What", "inferred"),
    ("How", "inferred"),
  ]


def test_bootstrap_ci_is_deterministic_and_contains_mean():
  values = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1], dtype=float)
  first, second = bootstrap_mean_ci(values, seed=3), bootstrap_mean_ci(values, seed=3)
  assert first == second
  assert first.mean == pytest.approx(0.7)
  assert first.low <= first.mean <= first.high
  assert bootstrap_mean_ci([], seed=0).n == 0


def test_bootstrap_ci_coverage_is_near_95_percent():
  """Percentile bootstrap of a Bernoulli(0.7) mean with n=120 covers 0.7 about 95 % of the time."""
  rng = np.random.default_rng(0)
  trials = 200
  covered = 0
  for trial in range(trials):
    sample = rng.random(120) < 0.7
    ci = bootstrap_mean_ci(sample, n_resamples=400, seed=trial)
    covered += ci.low <= 0.7 <= ci.high
  assert 0.88 <= covered / trials <= 0.995


def test_bootstrap_width_shrinks_with_more_items():
  rng = np.random.default_rng(1)
  small = bootstrap_mean_ci(rng.random(40) < 0.5, seed=0)
  large = bootstrap_mean_ci(rng.random(4000) < 0.5, seed=0)
  assert (large.high - large.low) < (small.high - small.low) / 5


def test_both_accuracies_and_the_disagreements(fixture_items, tmp_path):
  """Strict and VLMEvalKit readings of the same answers, computed by hand from each rule set."""
  predictions = {
    "1": "Yes",  # strict A (yes/no word, right); VLMEvalKit keeps "Yes": wrong
    "2": "A: the answer is B",  # strict B (right); VLMEvalKit A (rule 4): wrong
    "3": "C",  # both C, right
    "4": "b) Usable",  # both B, right
    "5": "Ｄ",  # strict D (NFKC, right); VLMEvalKit keeps the full-width letter: wrong
    "6": "The image shows undersampling, so option B",  # both B (VLMEvalKit: first isolated B)
  }
  outcomes, _ = perception.score_items(fixture_items, predictions)
  overall = perception.group_accuracy(outcomes, "overall", "all", n_resamples=0)
  assert (overall.correct, overall.correct_vlmevalkit) == (6, 3)
  assert overall.accuracy_vlmevalkit == pytest.approx(3 / 6)
  assert perception.vlmevalkit_accuracy(outcomes) == pytest.approx(3 / 6)
  rows = {(r.group, r.value): r for r in perception.breakdown(outcomes, n_resamples=0)}
  assert rows[("modality", "CT")].accuracy_vlmevalkit == pytest.approx(2 / 3)  # items 3, 6
  assert rows[("modality", "MRI")].accuracy_vlmevalkit == pytest.approx(1 / 3)  # item 4
  found = {d.index: d for d in perception.disagreements(outcomes)}
  assert sorted(found) == ["1", "2", "5"]
  assert (found["2"].strict_letter, found["2"].vlmevalkit_letter) == ("B", "A")
  assert found["1"].vlmevalkit_letter is None and found["1"].vlmevalkit_extracted == "Yes"

  from medq_jax.bench.report import write_report
  from medq_jax.bench.runner import BenchResults, TrackResult

  track = TrackResult(
    "perception",
    "qa.tsv",
    "pred.tsv",
    6,
    [],
    perception_outcomes=outcomes,
    perception_rows=perception.breakdown(outcomes, n_resamples=0),
  )
  results = BenchResults("m", None, None, {"perception": track}, {})
  written = write_report(results, str(tmp_path))
  text = (tmp_path / "report.md").read_text()
  assert "strict extraction (ours): 100.00% (6/6)" in text
  assert "VLMEvalKit rules (the number VLMEvalKit prints): 50.00% (3/6)" in text
  assert "| 2 | B | A: the answer is B | B | answer phrase | A | yes | no |" in text
  disagreements_csv = (tmp_path / "tables" / "perception_disagreements.csv").read_text()
  assert len(disagreements_csv.strip().splitlines()) == 1 + 3
  assert "leaderboard_perception" not in written  # none asked for
