"""Option extraction on answer styles seen from real MLLMs (MedQ-Bench appendix A.5 and others).

The `vlmevalkit` cases are written from VLMEvalKit's source
(vlmeval/dataset/medqbench_mcq.py, ``_extract_option_letter`` and ``evaluate``, commit e8e78f0):
each names the rule that decides it there.
"""

import pytest

from medq_jax.bench.extraction import (
  PANDAS_NA_STRINGS,
  extract_option,
  extract_option_vlmevalkit,
  vlmevalkit_correct,
)

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
  # lower-case, bracketed and emphasised letters; other languages; option text
  ("b) Undersampling artifacts", FOUR, "B"),
  ("(c) metal artifacts", FOUR, "C"),
  ("c. Metal artifacts", FOUR, "C"),
  ("[d] noise", FOUR, "D"),
  ("*b*", FOUR, "B"),
  ("_C_", FOUR, "C"),
  ("The answer is **b**.", FOUR, "B"),
  ("答案是b", FOUR, "B"),
  ("正确答案：（C）", FOUR, "C"),
  ("La respuesta es C.", FOUR, "C"),
  ("Die Antwort ist D", FOUR, "D"),
  ("Réponse : a", FOUR, "A"),
  ("A: the answer is C", FOUR, "C"),  # VLMEvalKit reads A (its leading "X:" rule)
  ("Maybe D; the answer is B", FOUR, "B"),  # VLMEvalKit reads D (first isolated letter)
  ("No, I cannot see any blur.", YES_NO, "B"),  # a leading No, not a refusal
  ("metal artifacts", FOUR, "C"),
  # no single intended option: unanswerable, listed with the reason
  ("None of the above.", FOUR, None),
  ("I'm sorry, I can't assess this image.", THREE, None),
  ("B and C", FOUR, None),
  ("N/A", FOUR, None),  # not applicable, not option A
  ("The streaks cannot be ignored, but it is usable.", THREE, "B"),  # no refusal
  ("It is not possible to determine the artifact type.", FOUR, None),
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


# (prediction cell as read from the file, what `_extract_option_letter` returns; None = NaN)
VLMEVALKIT_CASES = [
  ("B", "B"),  # rule 1: the upper-cased, stripped text is one of A-D
  ("b", "B"),
  ("  c \n", "C"),
  ("B. Moderate", "B"),  # rule 2: ^X followed by ".", ")" or whitespace
  ("b) usable", "B"),  # rule 2 runs on the upper-cased text
  ("C\tReject", "C"),
  ("A motion artifact is present.", "A"),  # rule 2: the article A is option A there
  ("A: the answer is C", "A"),  # rule 3 never fires (lower-case pattern); rule 4: ^X:
  ("Maybe D; the answer is B", "D"),  # rule 3 never fires; rule 5: first isolated letter
  ("The answer is C", "C"),  # rule 5 (not rule 3)
  ("D-Noise", "D"),  # rule 4: ^X\s*-
  ("B:Usable", "B"),  # rule 4
  ("(B)", "B"),  # rule 5: isolated between non-letters
  ("**B**", "B"),
  ("Answer: B", "B"),  # rule 5: the A of ANSWER touches N
  ("I think B or C", "B"),  # rule 5: the first of several
  ("答案：B", "B"),
  ("The correct option is A.", "A"),  # rule 5: the C of CORRECT touches O
  ("Bad quality", "Bad quality"),  # no rule: the raw text, scored wrong
  ("I cannot tell", "I cannot tell"),
  ("Ｂ", "Ｂ"),  # full-width: not A-D after upper()
  ("E", "E"),
  ("1", "1"),
  ("", None),  # pandas reads an empty cell as NaN, which the function returns as is
  ("nan", None),
  ("N/A", None),  # a pandas NA string: NaN, although its text would give A by rule 5
  ("NA", None),
  (" N/A", "A"),  # not an NA string with the space: stripped, then rule 5
  (None, None),
  (float("nan"), None),
]


@pytest.mark.parametrize("prediction,expected", VLMEVALKIT_CASES)
def test_vlmevalkit_rules(prediction, expected):
  assert extract_option_vlmevalkit(prediction) == expected


def test_vlmevalkit_comparison():
  """`evaluate`: str(answer).upper() == str(extracted).upper(); NaN is the string 'nan'."""
  assert vlmevalkit_correct("B", "B")
  assert not vlmevalkit_correct(None, "A")
  assert not vlmevalkit_correct("Bad quality", "B")
  assert not vlmevalkit_correct("Ｂ", "B")


def test_pandas_na_strings_are_pandas_defaults(tmp_path):
  """The NA strings are pandas' own: read through pandas, each becomes NaN, nothing else does."""
  pandas = pytest.importorskip("pandas")
  cells = sorted(PANDAS_NA_STRINGS - {""}) + [" N/A", "B", "none", "Null "]
  path = tmp_path / "p.tsv"
  path.write_text("index\tprediction\n" + "".join(f"{i}\t{c}\n" for i, c in enumerate(cells)))
  frame = pandas.read_csv(path, sep="\t", keep_default_na=True)
  for cell, is_na in zip(cells, frame["prediction"].isna()):
    assert (extract_option_vlmevalkit(cell) is None) == bool(is_na), cell


@pytest.mark.parametrize(
  "prediction,options,strict,vlmevalkit",
  [
    ("A: the answer is C", FOUR, "C", "A"),
    ("b", FOUR, "B", "B"),
    ("Ｂ", FOUR, "B", "Ｂ"),
    ("Undersampling artifacts", FOUR, "B", "Undersampling artifacts"),
    ("None of the above.", FOUR, None, "None of the above."),
  ],
)
def test_modes_side_by_side(prediction, options, strict, vlmevalkit):
  assert extract_option(prediction, options).letter == strict
  assert extract_option_vlmevalkit(prediction) == vlmevalkit
