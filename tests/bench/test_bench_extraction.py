"""Option extraction on answer styles seen from real MLLMs (MedQ-Bench appendix A.5 and others)."""

import pytest

from medq_jax.bench.extraction import extract_option, extract_option_vlmevalkit

YES_NO = {"A": "Yes", "B": "No"}
THREE = {"A": "Good", "B": "Usable", "C": "Reject"}
FOUR = {
  "A": "Motion artifacts",
  "B": "Undersampling artifacts",
  "C": "Metal artifacts",
  "D": "Noise",
}
QUALITY_ISSUE = {
  "A": "Blurry and out of focus",
  "B": "Poor contrast and tonal separation",
  "C": "Excessive noise and artifacts",
  "D": "Insufficient illumination",
}

# (prediction, options, expected letter or None)
CASES = [
  ("B", FOUR, "B"),
  ("b", FOUR, "B"),
  ("B.", FOUR, "B"),
  ("(B)", FOUR, "B"),
  ("[C]", FOUR, "C"),
  ("D)", FOUR, "D"),
  ("  A  ", FOUR, "A"),
  ("**B**", FOUR, "B"),
  ("Ｂ", FOUR, "B"),  # full-width letter
  ("（Ｃ）", FOUR, "C"),  # full-width parentheses
  ("B. Poor contrast and tonal separation", QUALITY_ISSUE, "B"),  # mistral in Fig. 10
  ("A. Yes", YES_NO, "A"),
  ("C) Reject", THREE, "C"),
  ("D - Noise", FOUR, "D"),
  ("B: Usable", THREE, "B"),
  ("B Usable", THREE, "B"),
  ("A Good", THREE, "A"),
  ("The answer is B.", FOUR, "B"),
  ("the answer is c", THREE, "C"),
  ("Answer: (C)", FOUR, "C"),
  ("Answer: D", FOUR, "D"),
  ("Final answer: A", FOUR, "A"),
  ("I choose B because the streaks are undersampling related.", FOUR, "B"),
  ("I would go with C.", THREE, "C"),
  ("The correct option is D", FOUR, "D"),
  ("Option A is plausible, but looking closer the answer is D.", FOUR, "D"),
  ("<think>It could be A or B... B seems right.</think>\nB", FOUR, "B"),
  ("<think>hmm</think> The answer is C", FOUR, "C"),
  ("Option B", FOUR, "B"),
  ("Option B: Undersampling artifacts", FOUR, "B"),
  ("Based on the image, option C best describes it.", FOUR, "C"),
  ("Yes", YES_NO, "A"),
  ("No.", YES_NO, "B"),
  ("no", YES_NO, "B"),
  ("Yes, the optic disc is clearly delineated.", YES_NO, "A"),
  ("No, there is considerable blur around the optic disc.", YES_NO, "B"),
  ("Undersampling artifacts", FOUR, "B"),
  ("The image mainly shows metal artifacts from an implant.", FOUR, "C"),
  ("Usable", THREE, "B"),
  ("Reject.", THREE, "C"),
  ("A motion artifact is not present; the dominant issue is noise.", FOUR, "D"),
  ("Insufficient illumination", QUALITY_ISSUE, "D"),
  ("Motion artifacts (A)", FOUR, "A"),
  ("The correct answer is: B. Undersampling artifacts", FOUR, "B"),
  ("Answer: B\nExplanation: option A is wrong because motion is absent.", FOUR, "B"),
  ("B\n\nThe image shows aliasing.", FOUR, "B"),
  ("**Answer:** C", THREE, "C"),
  ("Based on the image, the answer is (B) Usable.", THREE, "B"),
  ("The image quality is usable.", THREE, "B"),
  ("答案：B", FOUR, "B"),
  ("Option (D)", FOUR, "D"),
  ("I would select option C.", FOUR, "C"),
  ("My answer: a", THREE, "A"),
  # unparseable answers
  ("", FOUR, None),
  ("   ", FOUR, None),
  (None, FOUR, None),
  (float("nan"), FOUR, None),
  ("A or B", FOUR, None),
  ("I cannot determine the quality from this image.", THREE, None),
  ("E", FOUR, None),  # not an option letter at all
  ("D", THREE, None),  # letter outside a three-option item
  ("The answer is D", YES_NO, None),  # letter outside a Yes/No item
  ("Both motion artifacts and noise are visible.", FOUR, None),
  ("Option A or option C", FOUR, None),
]


def test_table_has_at_least_forty_styles():
  assert len(CASES) >= 40


@pytest.mark.parametrize("prediction,options,expected", CASES)
def test_extract_option(prediction, options, expected):
  result = extract_option(prediction, options)
  assert result.letter == expected, (prediction, result)
  assert result.parsed == (expected is not None)


def test_unparseable_reasons_are_specific():
  assert extract_option("", FOUR).rule == "empty prediction"
  assert "not among options" in extract_option("D", THREE).rule
  assert extract_option("A or B", FOUR).rule.startswith("ambiguous")
  assert extract_option("no idea whatsoever", FOUR).rule == "no option found"


@pytest.mark.parametrize(
  "prediction,expected",
  [
    ("B", "B"),
    ("b", "B"),
    ("B. Moderate", "B"),
    ("The answer is C", "C"),
    ("Option D", "D"),
    ("C: reject", "C"),
    ("", None),
    ("I cannot tell", None),
    ("A motion artifact", "A"),  # the reference reads the article as option A
  ],
)
def test_vlmevalkit_rules(prediction, expected):
  assert extract_option_vlmevalkit(prediction) == expected
