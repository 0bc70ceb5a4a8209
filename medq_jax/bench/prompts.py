"""MedQ-Bench prompts, byte for byte those of VLMEvalKit (the reference scorer).

The judge templates are VLMEvalKit's ``PROMPT_TEMPLATES`` (vlmeval/dataset/medqbench_caption.py)
and ``PAIRED_PROMPT_TEMPLATES`` (medqbench_paired_description.py): the paper's appendix A.3
words, its paragraphs joined by spaces. The model prompts are VLMEvalKit's ``build_prompt`` /
default ``question`` texts. tests/bench/test_bench_prompts.py checks each against SHA-256 digests
taken from VLMEvalKit's source and against the paper's words. Templates contain
``[MLLM DESC]`` and ``[GOLDEN DESC]``; the texts are substituted inside the brackets.
"""

from __future__ import annotations

from collections.abc import Mapping

DIMENSIONS = ("completeness", "preciseness", "consistency", "quality_accuracy")
DIMENSION_TITLES = {
  "completeness": "Comp.",
  "preciseness": "Prec.",
  "consistency": "Cons.",
  "quality_accuracy": "Qual.",
}

# ----------------------------------------------------------------------------- model prompts
# VLMEvalKit's perception prompt starts here; the paper's template has one more line before it
# (PAPER_PERCEPTION_ROLE), which `perception_prompt(..., paper_role=True)` adds.
PERCEPTION_PREAMBLE = (
  "Please carefully observe this medical image and answer the following question:"
)
PAPER_PERCEPTION_ROLE = "You are an expert in medical image quality assessment."

# The reference scorer's answer-format instruction (VLMEvalKit MedqbenchMCQDataset).
PERCEPTION_ANSWER_INSTRUCTION = (
  "Answer directly only with the option **letter** from the given choices."
)

NOREF_REASONING_PROMPT = (
  "As a medical image quality assessment expert, provide a concise description focusing on "
  'low-level appearance of the image in details. Conclude with "Overall, the quality of this '
  'image is [good/usable/reject]". Please provide a comprehensive but concise assessment in '
  "3-5 sentences."
)

PAIRED_REASONING_PROMPT = (
  "As a medical image quality assessment expert, provide a concise description comparing two "
  "images focusing on low-level appearance. Conclude with which image has higher quality. "
  "Please provide a comprehensive but concise assessment in 3-5 sentences."
)

# ----------------------------------------------------------------------------- judge prompts
_SYSTEM = "#System: You are a helpful assistant.\n"
_FORMAT = "Please only provide the result in the following format: Score:"

_COMPLETENESS = (
  _SYSTEM
  + "#User: Evaluate whether the description [MLLM DESC] completely includes the low-level visual "
  "information in the reference description [GOLDEN DESC]. Please rate score 2 for completely or "
  "almost completely including reference information, 0 for not including at all, 1 for including "
  "part of the information or similar description. " + _FORMAT
)

_PRECISENESS = (
  _SYSTEM
  + "#User: The precision metric evaluates whether the low-level description is consistent with the "
  "reference and reasonably aligned with the final quality judgment. Minor wording differences or "
  "small omissions that do not change the overall meaning should still be considered consistent. "
  "Only penalize clear contradictions with the reference, such as describing blur for clear, noisy "
  "for clean, motion-free for motion artifacts, noise-free for low-dose noise, etc. "
  "Evaluate whether output [MLLM DESC] reasonably reflects reference [GOLDEN DESC]. "
  "Please rate score 2 for overall consistency and no major contradictions with the quality "
  "conclusion, 1 for partial consistency or very few minor contradictions, and 0 for obvious "
  "contradictions or misalignment with the quality conclusion. " + _FORMAT
)

NOREF_JUDGE_PROMPTS: Mapping[str, str] = {
  "completeness": _COMPLETENESS,
  "preciseness": _PRECISENESS,
  "consistency": (
    _SYSTEM
    + "#User: Evaluate the internal consistency between the reasoning path (description of image "
    "problems) and the final quality judgment in [MLLM DESC]. The reasoning should logically "
    "support the final quality conclusion. For example, if many serious problems are described, "
    'the final quality should be "reject"; if minor problems are described, it should be '
    '"usable"; if no or very few problems are described, it should be "good". '
    "Compare with the reference [GOLDEN DESC] to understand the expected reasoning-conclusion "
    "relationship. "
    "Please rate score 2 for highly consistent reasoning and conclusion, 1 for partially "
    "consistent with minor logical gaps, and 0 for major inconsistency between described problems "
    "and quality judgment. " + _FORMAT
  ),
  "quality_accuracy": (
    _SYSTEM
    + "#User: Evaluate the accuracy of the final quality judgment in [MLLM DESC] compared to the "
    "reference [GOLDEN DESC]. "
    "The quality levels have a progressive relationship: reject < usable < good. Consider the "
    "distance between predicted and reference quality: "
    "Please rate score 2 for exactly matching the reference quality level, 1 for adjacent level "
    "difference (e.g., usable vs good, or reject vs usable), and 0 for distant level difference "
    "(reject vs good) or completely incorrect quality assessment. " + _FORMAT
  ),
}

PAIRED_JUDGE_PROMPTS: Mapping[str, str] = {
  "completeness": _COMPLETENESS,
  "preciseness": _PRECISENESS,
  "consistency": (
    _SYSTEM
    + "#User: Evaluate the internal consistency between the reasoning path (comparative description "
    "of image problems) and the final quality comparison judgment in [MLLM DESC]. The reasoning "
    "should logically support the final comparison conclusion. "
    "Compare with the reference [GOLDEN DESC] to understand the expected reasoning-conclusion "
    "relationship for image comparison. "
    "Please rate score 2 for highly consistent reasoning and comparison conclusion, 1 for "
    "partially consistent with minor logical gaps, and 0 for major inconsistency between described "
    "comparative problems and quality comparison judgment. " + _FORMAT
  ),
  "quality_accuracy": (
    _SYSTEM
    + "#User: Evaluate the accuracy of the final quality comparison judgment in [MLLM DESC] "
    "compared to the reference [GOLDEN DESC]. "
    "The comparison should correctly identify which image has higher quality based on the "
    "described visual characteristics. "
    "Please rate score 2 for exactly matching the reference quality comparison, and 0 for "
    "completely incorrect quality comparison (opposite conclusion) or unreasonable assessment. "
    + _FORMAT
  ),
}


def perception_prompt(question: str, options: Mapping[str, str], paper_role: bool = False) -> str:
  """VLMEvalKit's perception prompt: the question, its non-empty options (stripped) as
  "X. text" lines in letter order, the answer instruction. ``paper_role`` prepends the paper's
  first line."""
  lines = [f"{k}. {str(v).strip()}" for k, v in sorted(options.items()) if str(v).strip()]
  prompt = (
    f"{PERCEPTION_PREAMBLE}\n\n{question}\n\nOptions:\n" + "\n".join(lines) + "\n\n"
    f"{PERCEPTION_ANSWER_INSTRUCTION}"
  )
  return f"{PAPER_PERCEPTION_ROLE}\n{prompt}" if paper_role else prompt


def judge_prompt(
  kind: str, dimension: str, mllm_desc: str, golden_desc: str, vlmevalkit: bool = False
) -> str:
  """Fills one judge template; ``kind`` is "noref" or "paired".

  ``vlmevalkit``: VLMEvalKit's two successive ``str.replace`` calls, so a model output that
  itself contains "GOLDEN DESC" gets the golden text substituted into it. Otherwise one pass:
  each placeholder of the template is filled once and the texts are left as written.
  """
  templates = NOREF_JUDGE_PROMPTS if kind == "noref" else PAIRED_JUDGE_PROMPTS
  if kind not in ("noref", "paired") or dimension not in templates:
    raise ValueError(f"no judge prompt for kind={kind!r}, dimension={dimension!r}")
  template = templates[dimension]
  if vlmevalkit:
    return template.replace("MLLM DESC", mllm_desc).replace("GOLDEN DESC", golden_desc)
  head, tail = template.split("[MLLM DESC]", 1)
  return (
    head.replace("[GOLDEN DESC]", f"[{golden_desc}]")
    + f"[{mllm_desc}]"
    + tail.replace("[GOLDEN DESC]", f"[{golden_desc}]")
  )


def split_roles(prompt: str) -> list[dict[str, str]]:
  """'#System: ...\\n#User: ...' -> chat messages with system and user roles."""
  if prompt.startswith("#System:") and "\n#User:" in prompt:
    system, user = prompt.split("\n#User:", 1)
    return [
      {"role": "system", "content": system[len("#System:") :].strip()},
      {"role": "user", "content": user.strip()},
    ]
  return [{"role": "user", "content": prompt}]
