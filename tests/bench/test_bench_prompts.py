"""The judge prompts are the paper's appendix A.3 text, word for word."""

import os
import pathlib
import re

import pytest

from medq_jax.bench import prompts

PAPER = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "papers", "medq-bench.txt"
)  # CI puts shared/ beside the checkout
HEADINGS = (
  "Completeness Evaluation Prompt:",
  "Preciseness Evaluation Prompt:",
  "Consistency Evaluation Prompt:",
  "Quality Accuracy Evaluation Prompt:",
)


def _paper_blocks():
  """{('noref'|'paired', dimension): words} parsed from the paper text (line numbers removed)."""
  text = pathlib.Path(PAPER).read_text(encoding="utf-8")
  start = text.index("Complete Evaluation Prompt Templates for No-reference Reasoning Tasks")
  middle = text.index("Complete Evaluation Prompt Templates for Comparison Reasoning Tasks")
  end = text.index("A.4 COMPLETE EXPERIMENTAL RESULTS")
  blocks = {}
  for kind, section in (("noref", text[start:middle]), ("paired", text[middle:end])):
    lines = []
    for line in section.splitlines():
      line = re.sub(r"^\s*\d{3,4}\s*", "", line).replace("**", "").strip()
      if line and not re.fullmatch(r"\d+", line):
        lines.append(line)
    body = " ".join(lines)
    for position, heading in enumerate(HEADINGS):
      begin = body.index(heading) + len(heading)
      stop = body.index(HEADINGS[position + 1]) if position + 1 < len(HEADINGS) else len(body)
      words = body[begin:stop].split()
      # trailing page furniture after the last prompt
      if "Score:" in words:
        words = words[: len(words) - words[::-1].index("Score:")]
      blocks[(kind, prompts.DIMENSIONS[position])] = words
  return blocks


@pytest.mark.skipif(not os.path.exists(PAPER), reason="paper text not available")
@pytest.mark.parametrize("kind", ["noref", "paired"])
@pytest.mark.parametrize("dimension", prompts.DIMENSIONS)
def test_judge_prompts_match_paper_word_for_word(kind, dimension):
  paper = _paper_blocks()[(kind, dimension)]
  ours = (prompts.NOREF_JUDGE_PROMPTS if kind == "noref" else prompts.PAIRED_JUDGE_PROMPTS)[
    dimension
  ].split()
  assert ours == paper


def test_noref_and_paired_differ_only_where_the_paper_does():
  for dimension in ("completeness", "preciseness"):
    assert prompts.NOREF_JUDGE_PROMPTS[dimension] == prompts.PAIRED_JUDGE_PROMPTS[dimension]
  for dimension in ("consistency", "quality_accuracy"):
    assert prompts.NOREF_JUDGE_PROMPTS[dimension] != prompts.PAIRED_JUDGE_PROMPTS[dimension]


def test_placeholders_are_filled_inside_brackets_once():
  text = prompts.judge_prompt("noref", "completeness", "OUT [GOLDEN DESC] text", "REF")
  assert "[OUT [GOLDEN DESC] text]" in text  # a description is never substituted into
  assert "[REF]" in text and "MLLM DESC" not in text
  with pytest.raises(ValueError, match="no judge prompt"):
    prompts.judge_prompt("noref", "fluency", "a", "b")


def test_split_roles():
  messages = prompts.split_roles(prompts.judge_prompt("paired", "quality_accuracy", "a", "b"))
  assert [m["role"] for m in messages] == ["system", "user"]
  assert messages[0]["content"] == "You are a helpful assistant."
  assert messages[1]["content"].startswith("Evaluate the accuracy of the final quality comparison")


def test_perception_prompt_layout():
  text = prompts.perception_prompt("Is this image clear?", {"A": "Yes", "B": "No"})
  assert text.startswith(
    "You are an expert in medical image quality assessment.\n"
    "Please carefully observe this medical image and answer the following question:"
  )
  assert "Is this image clear?\n\nOptions:\nA. Yes\nB. No\n\n" in text
