"""MedQ-Bench-style items generated from our data pipeline's examples.

An example is a dict with ``id``, ``low`` (degraded float [H, W] in [0, 1]), ``high``
(reference), ``modality``, ``anatomy``, ``task``, ``severity``, ``quality_label`` and
``description`` (see data_pipeline); its task's question term (``bench_term``) comes from the
data pipeline's degradation registry. Each example yields:

* perception MCQs for both images (``high`` = no degradation, ``low`` = its
  severity): Yes-or-No (general and modality-specific), What (modality-specific),
  How (general overall quality and modality-specific severity);
* no-reference reasoning items for ``low`` (the example's golden description) and
  ``high`` (a templated "good" description);
* one paired item (``high`` vs ``low`` in a seeded random order), coarse-grained
  when the degradation is severe and fine-grained otherwise.

Rows are in the VLMEvalKit TSV layout; an image already written is stored once and
later rows hold that row's index, as VLMEvalKit does.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import Any

from data_pipeline.degradations import registry
from medq_jax.bench.image_codec import encode_png_base64
from medq_jax.bench.io_files import write_rows
from medq_jax.bench.prompts import NOREF_REASONING_PROMPT, PAIRED_REASONING_PROMPT

MODALITY_ISSUES = {
  "CT": ("Low-dose noise", "Metal streak artifacts", "Ring artifacts"),
  "MRI": ("Motion artifacts", "Undersampling artifacts", "Noise"),
  "PET": ("Low-count noise", "Motion blur", "Attenuation-correction artifacts"),
  "fundus": ("Blur", "Uneven illumination", "Noise"),
}
NO_DEGRADATION = "No obvious degradation"
QA_COLUMNS = (
  "index",
  "image",
  "question",
  "A",
  "B",
  "C",
  "D",
  "answer",
  "modality",
  "question_type",
  "degradation_level",
  "question_scope",
  "task",
  "source_id",
)
DESCRIPTION_COLUMNS = (
  "index",
  "image",
  "question",
  "description",
  "modality",
  "degradation_level",
  "task",
  "source_id",
)
PAIRED_COLUMNS = (
  "index",
  "image_a",
  "image_b",
  "question",
  "description",
  "modality",
  "granularity",
  "task",
  "source_id",
)


def _coin(text: str, seed: int) -> int:
  return int(hashlib.sha256(f"{seed}:{text}".encode()).hexdigest(), 16)


def task_term(task: str) -> str:
  """The degradation's short name in questions ("low-dose noise"), from the data registry."""
  return registry.get(task).bench_term


def _term(example: dict) -> str:
  try:
    return task_term(example["task"])
  except ValueError as error:
    raise ValueError(f"example {example.get('id')!r}: {error}") from None


def _issue_option(modality: str, term: str) -> str:
  for option in MODALITY_ISSUES[modality]:
    if option.lower() == term.lower():
      return option
  return term[0].upper() + term[1:]


def _mcq(question, options, answer_text, **meta) -> dict[str, Any]:
  row = {"question": question, **dict.fromkeys("ABCD", ""), **meta}
  for letter, text in zip("ABCD", options):
    row[letter] = text
  row["answer"] = "ABCD"[list(options).index(answer_text)]
  return row


def perception_rows(example: dict, level: str, seed: int) -> list[dict[str, Any]]:
  """The five MCQs for one image of an example; ``level`` is "none" or a severity."""
  modality, term = example["modality"], _term(example)
  if modality not in MODALITY_ISSUES:
    raise ValueError(f"example {example.get('id')!r}: unknown modality {modality!r}")
  degraded = level != "none"
  issue = _issue_option(modality, term)
  issues = list(MODALITY_ISSUES[modality])
  if issue not in issues:
    issues = issues[:2] + [issue]
  what_options = issues + [NO_DEGRADATION]
  rotation = _coin(f"{example['id']}:{level}:what", seed) % len(what_options)
  what_options = what_options[rotation:] + what_options[:rotation]
  quality = example["quality_label"].capitalize() if degraded else "Good"
  meta = dict(modality=modality, degradation_level=level, task=example["task"])
  return [
    _mcq(
      "Is this image free of visible noise and artifacts?",
      ("Yes", "No"),
      "No" if degraded else "Yes",
      question_type="Yes-or-No",
      question_scope="general",
      **meta,
    ),
    _mcq(
      f"Does this {modality} image show {term}?",
      ("Yes", "No"),
      "Yes" if degraded else "No",
      question_type="Yes-or-No",
      question_scope="modality-specific",
      **meta,
    ),
    _mcq(
      f"What is the primary quality issue in this {modality} image?",
      what_options,
      issue if degraded else NO_DEGRADATION,
      question_type="What",
      question_scope="modality-specific",
      **meta,
    ),
    _mcq(
      "How would you rate the overall quality of this image?",
      ("Good", "Usable", "Reject"),
      quality,
      question_type="How",
      question_scope="general",
      **meta,
    ),
    _mcq(
      f"How severe is the {term} in this {modality} image?",
      ("None", "Mild", "Moderate", "Severe"),
      level.capitalize() if degraded else "None",
      question_type="How",
      question_scope="modality-specific",
      **meta,
    ),
  ]


def clean_description(example: dict) -> str:
  return (
    f"This is a {example['modality']} image of the {example['anatomy']}. The image shows sharp "
    "anatomical boundaries and good contrast, with no noticeable noise or artifacts. Fine structures "
    "are clearly visible and fully support diagnostic interpretation. Overall, the quality of this "
    "image is good."
  )


def paired_description(example: dict, degraded_first: bool) -> str:
  term, severity = _term(example), example["severity"]
  degraded, clean = ("first", "second") if degraded_first else ("second", "first")
  return (
    f"The {clean} image shows sharp anatomical boundaries with no noticeable noise or artifacts. "
    f"The {degraded} image exhibits {severity} {term} that reduces clarity and obscures fine "
    f"structures of the {example['anatomy']}. Overall, the {clean} image has higher quality."
  )


class _ImageStore:
  """Encodes images once; later uses refer to the first row index that holds them."""

  def __init__(self):
    self.first_index: dict[str, str] = {}

  def value(self, image, index: str) -> str:
    data = encode_png_base64(image)
    digest = hashlib.sha256(data.encode()).hexdigest()
    if digest in self.first_index:
      return self.first_index[digest]
    self.first_index[digest] = index
    return data


def generate_items(examples: Iterable[dict], seed: int = 0) -> dict[str, list[dict[str, Any]]]:
  """Returns {"qa": rows, "description": rows, "paired": rows} in VLMEvalKit layout."""
  qa, description, paired = [], [], []
  qa_images, description_images = _ImageStore(), _ImageStore()
  for example in examples:
    for key, level in (("high", "none"), ("low", example["severity"])):
      for row in perception_rows(example, level, seed):
        index = str(len(qa))
        qa.append(
          {
            "index": index,
            "image": qa_images.value(example[key], index),
            "source_id": f"{example['id']}:{key}",
            **row,
          }
        )
      index = str(len(description))
      description.append(
        {
          "index": index,
          "image": description_images.value(example[key], index),
          "question": NOREF_REASONING_PROMPT,
          "description": example["description"] if key == "low" else clean_description(example),
          "modality": example["modality"],
          "degradation_level": level,
          "task": example["task"],
          "source_id": f"{example['id']}:{key}",
        }
      )
    degraded_first = _coin(f"{example['id']}:pair", seed) % 2 == 0
    first, second = (
      (example["low"], example["high"]) if degraded_first else (example["high"], example["low"])
    )
    paired.append(
      {
        "index": str(len(paired)),
        "image_a": encode_png_base64(first),
        "image_b": encode_png_base64(second),
        "question": PAIRED_REASONING_PROMPT,
        "description": paired_description(example, degraded_first),
        "modality": example["modality"],
        "granularity": "coarse" if example["severity"] == "severe" else "fine",
        "task": example["task"],
        "source_id": example["id"],
      }
    )
  return {"qa": qa, "description": description, "paired": paired}


FILE_NAMES = {
  "qa": "medqbench_QA_{split}",
  "description": "medqbench_description_{split}",
  "paired": "medqbench_paired_description_{split}",
}
_COLUMNS = {"qa": QA_COLUMNS, "description": DESCRIPTION_COLUMNS, "paired": PAIRED_COLUMNS}


def write_items(
  rows: dict[str, list[dict]], out_dir: str, split: str = "test", fmt: str = "tsv"
) -> dict[str, str]:
  """Writes the three files (``medqbench_QA_{split}.tsv`` ...); returns {kind: path}."""
  paths = {}
  for kind, kind_rows in rows.items():
    path = os.path.join(out_dir, FILE_NAMES[kind].format(split=split) + f".{fmt}")
    write_rows(path, kind_rows, _COLUMNS[kind])
    paths[kind] = path
  return paths
