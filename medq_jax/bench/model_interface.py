"""How our own model plugs into the benchmark.

A model implements `BenchModel`: option log-likelihoods (the paper's ``argmax P(c | I, q)``)
and free text from ``describe``/``compare`` for reasoning. A model that also implements
`AnsweringBenchModel.answer` answers perception questions as VLMEvalKit's models do: it
generates text from the MCQ prompt, that text is the scored prediction (the scorer extracts its
letter), and the likelihood letter is an extra column. `predict_items` runs a model over items
and returns predictions rows that the normal file scorer consumes, so our model and any MLLM's
predictions file go through the very same scoring code. Our MedQ-UNI model
(`medq_jax.infer.bench_model`) is one such model; launch/bench.py loads it (bench and infer are
sibling layers: neither imports the other).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from medq_jax.bench.extraction import extract_option
from medq_jax.bench.items import load_image
from medq_jax.bench.prompts import (
  NOREF_REASONING_PROMPT,
  PAIRED_REASONING_PROMPT,
  perception_prompt,
)
from medq_jax.bench.schema import McqItem, ReasoningItem


@runtime_checkable
class BenchModel(Protocol):
  """The three calls the benchmark needs from a model.

  image: uint8 or float array [H, W] or [H, W, C].
  """

  def option_log_likelihoods(
    self, image: np.ndarray, question: str, options: list[str]
  ) -> np.ndarray:
    """[n_options] log P(option text | image, question), in the order given."""
    ...

  def describe(self, image: np.ndarray, prompt: str) -> str:
    """Free-text quality description of one image."""
    ...

  def compare(self, image_a: np.ndarray, image_b: np.ndarray, prompt: str) -> str:
    """Free-text comparison of two images ending with which has higher quality."""
    ...


@runtime_checkable
class AnsweringBenchModel(BenchModel, Protocol):
  """A `BenchModel` that also generates answers to perception questions."""

  def answer(self, image: np.ndarray, prompt: str) -> str:
    """Generated free-text answer to the MCQ prompt (`prompts.perception_prompt`)."""
    ...


def choose_option(log_likelihoods: np.ndarray, letters: Sequence[str]) -> str:
  """Argmax over options; ties go to the earliest letter. Rejects NaN and wrong lengths."""
  scores = np.asarray(log_likelihoods, dtype=np.float64).reshape(-1)
  if scores.shape[0] != len(letters):
    raise ValueError(f"model returned {scores.shape[0]} log-likelihoods for {len(letters)} options")
  if np.isnan(scores).any():
    raise ValueError(f"model returned NaN log-likelihoods: {scores.tolist()}")
  return letters[int(np.argmax(scores))]


def predict_mcq(
  model: BenchModel, item: McqItem, image: np.ndarray | None = None
) -> dict[str, Any]:
  """One perception item -> predictions row.

  Columns: `prediction` (scored): the generated answer text for an `AnsweringBenchModel`, else
  the likelihood letter; `answer_letter` / `answer_rule`: the letter the scorer extracts from
  the generated text and the rule that found it (None / the failure reason when unparseable);
  `likelihood_letter` and `option_log_likelihoods`: the likelihood score.
  """
  image = load_image(item.image) if image is None else image
  letters = list(item.options)
  question = perception_prompt(item.question, item.options)
  scores = model.option_log_likelihoods(image, question, [item.options[k] for k in letters])
  likelihood_letter = choose_option(scores, letters)
  row = {"index": item.index, "prediction": likelihood_letter}
  if isinstance(model, AnsweringBenchModel):
    text = model.answer(image, question)
    extraction = extract_option(text, item.options)
    row.update(prediction=text, answer_letter=extraction.letter, answer_rule=extraction.rule)
  row["likelihood_letter"] = likelihood_letter
  row["option_log_likelihoods"] = [float(s) for s in np.asarray(scores).reshape(-1)]
  return row


def predict_reasoning(model: BenchModel, item: ReasoningItem) -> dict[str, Any]:
  """One reasoning item -> predictions row with the model's text."""
  images = [load_image(ref) for ref in item.images]
  if item.kind == "paired":
    text = model.compare(images[0], images[1], item.question or PAIRED_REASONING_PROMPT)
  else:
    text = model.describe(images[0], item.question or NOREF_REASONING_PROMPT)
  return {"index": item.index, "prediction": text}


def predict_items(model: BenchModel, items: Sequence) -> list[dict[str, Any]]:
  """Predictions rows for a list of McqItem or ReasoningItem."""
  rows = []
  for item in items:
    rows.append(
      predict_mcq(model, item) if isinstance(item, McqItem) else predict_reasoning(model, item)
    )
  return rows
