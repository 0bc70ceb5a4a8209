"""The prompts are VLMEvalKit's, byte for byte, and the paper's appendix A.3 words.

The digests below are SHA-256 of the UTF-8 strings in VLMEvalKit's source (open-compass/VLMEvalKit
commit e8e78f0: ``PROMPT_TEMPLATES`` in vlmeval/dataset/medqbench_caption.py,
``PAIRED_PROMPT_TEMPLATES`` in medqbench_paired_description.py, and the default ``question`` of
each dataset's ``load_data``), computed by evaluating those literals. The one intended difference:
in strict mode a model output is substituted once (VLMEvalKit's second ``replace`` also fills a
"GOLDEN DESC" the output itself contains); ``vlmevalkit`` mode does as VLMEvalKit does.
"""

import hashlib
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


VLMEVALKIT_SHA256 = {
  ("noref", "completeness"): "7c24fd3bf644e1268c313817b06f74a44fcb29614aac1a60ab9a6042ee4e7138",
  ("noref", "preciseness"): "d73a37d27040bcc0c9574d5a7770f122bb73fa28f3523bdccd05a79de75235fa",
  ("noref", "consistency"): "b95bca84722a6024787e472719c7e142ad96c2cfd6a776cc8959806f90a1c46d",
  ("noref", "quality_accuracy"): "39481d93b08e3b65abc5b47d7d74259b6efac8255adfbba855b57c713cf1074d",
  ("paired", "completeness"): "7c24fd3bf644e1268c313817b06f74a44fcb29614aac1a60ab9a6042ee4e7138",
  ("paired", "preciseness"): "d73a37d27040bcc0c9574d5a7770f122bb73fa28f3523bdccd05a79de75235fa",
  ("paired", "consistency"): "c4fdd82bb88239bdeb8681619433b835fbd8905934ba0d1b99fd33a9ffac57f2",
  (
    "paired",
    "quality_accuracy",
  ): "8ca2c1bde9fa1e6a8b79e1848b86f5168543eb35bcb87e28ef03ca5e0654b55e",
}
VLMEVALKIT_QUESTION_SHA256 = {
  "noref": "d0e688437fbc2699a7e0bed4c41bc94e1c9571d2f9755ee8a3cdf426827cf44f",
  "paired": "f5729483c55d8bfee8f5b7f53183d9bf178bcd66573334d27e99e9b3c66dcf0f",
}


def _sha(text: str) -> str:
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.mark.parametrize("kind,dimension", sorted(VLMEVALKIT_SHA256))
def test_judge_templates_are_vlmevalkits_byte_for_byte(kind, dimension):
  templates = prompts.NOREF_JUDGE_PROMPTS if kind == "noref" else prompts.PAIRED_JUDGE_PROMPTS
  assert _sha(templates[dimension]) == VLMEVALKIT_SHA256[(kind, dimension)]


def test_model_prompts_are_vlmevalkits():
  assert _sha(prompts.NOREF_REASONING_PROMPT) == VLMEVALKIT_QUESTION_SHA256["noref"]
  assert _sha(prompts.PAIRED_REASONING_PROMPT) == VLMEVALKIT_QUESTION_SHA256["paired"]
  # build_prompt's f-string, filled by hand from its source: empty options left out, texts
  # stripped, letters in A-D order
  expected = (
    "Please carefully observe this medical image and answer the following question:\n\n"
    "Is this image clear?\n\nOptions:\nA. Yes\nB. No\n\n"
    "Answer directly only with the option **letter** from the given choices."
  )
  assert prompts.perception_prompt("Is this image clear?", {"B": "No", "A": " Yes ", "C": ""}) == (
    expected
  )
  assert prompts.perception_prompt("Is this image clear?", {"A": "Yes", "B": "No"}, True) == (
    "You are an expert in medical image quality assessment.\n" + expected
  )


def test_vlmevalkit_substitution_replaces_twice():
  text = prompts.judge_prompt("noref", "completeness", "OUT GOLDEN DESC", "REF", vlmevalkit=True)
  assert "[OUT REF]" in text and "[REF]" in text
  strict = prompts.judge_prompt("noref", "completeness", "OUT GOLDEN DESC", "REF")
  assert "[OUT GOLDEN DESC]" in strict and "[REF]" in strict
  plain = ("noref", "preciseness", "a model text", "a golden text")
  assert prompts.judge_prompt(*plain) == prompts.judge_prompt(*plain, vlmevalkit=True)


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
