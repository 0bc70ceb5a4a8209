"""Item and exclusion records shared by every bench module.

MedQ-Bench has three kinds of items: perception multiple-choice questions (MCQ),
no-reference reasoning items (one image, a golden description) and paired
comparison items (two images, a golden comparative description). They are plain
frozen dataclasses so scoring functions stay pure.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

OPTION_LETTERS = ("A", "B", "C", "D")
QUESTION_TYPES = ("Yes-or-No", "What", "How")
DEGRADATION_LEVELS = ("none", "mild", "moderate", "severe")  # paper uses none/mild/severe
SCOPES = ("general", "modality-specific")
GRANULARITIES = ("fine", "coarse")
QUALITY_LABELS = ("reject", "usable", "good")  # ordinal: reject < usable < good
UNKNOWN = "unknown"


class BenchInputError(ValueError):
  """A benchmark file or prediction is malformed; the message names file, row and field."""


@dataclasses.dataclass(frozen=True)
class McqItem:
  """One perception multiple-choice question.

  ``options`` maps letters to option text, only the non-empty ones (Yes/No items
  have two). ``image`` is a lazily decoded image: either an array [H, W] or
  [H, W, C], or ``None`` when the caller did not ask for pixels.
  """

  index: str
  question: str
  options: dict[str, str]
  answer: str
  modality: str = UNKNOWN
  question_type: str = UNKNOWN
  question_type_source: str = "column"  # "column" or "inferred"
  degradation_level: str = UNKNOWN
  scope: str = UNKNOWN
  image: Any = dataclasses.field(default=None, repr=False)
  source: str = ""  # file the item was read from, for error messages

  @property
  def n_options(self) -> int:
    return len(self.options)


@dataclasses.dataclass(frozen=True)
class ReasoningItem:
  """A reasoning item: no-reference (one image) or paired (two images).

  ``kind`` is "noref" or "paired"; ``description`` is the golden text;
  ``granularity`` is "fine"/"coarse" for paired items when known.
  """

  index: str
  kind: str
  description: str
  question: str = ""
  modality: str = UNKNOWN
  granularity: str = UNKNOWN
  degradation_level: str = UNKNOWN
  images: tuple = dataclasses.field(default=(), repr=False)
  source: str = ""


@dataclasses.dataclass(frozen=True)
class Exclusion:
  """One item left out of (or counted as wrong in) a score, and why."""

  index: str
  reason: str
  detail: str = ""


def as_gray_float(image: np.ndarray) -> np.ndarray:
  """Returns a float32 [H, W] image in [0, 1] from [H, W] or [H, W, C] of any dtype."""
  array = np.asarray(image)
  if array.ndim == 3:
    array = array[..., :3].mean(axis=-1)
  if array.ndim != 2:
    raise ValueError(f"expected a 2-D or 3-D image, got shape {array.shape}")
  if np.issubdtype(array.dtype, np.integer):
    array = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
  return np.clip(array.astype(np.float32), 0.0, 1.0)
