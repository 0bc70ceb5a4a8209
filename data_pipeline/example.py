"""The example contract: what `data_pipeline` yields, field by field (the model side relies on it).

One example is a dict with exactly the fields of `EXAMPLE_FIELDS`. Images are single channel,
float32 in [0, 1], shape [H, W] (H = W = config.image_size). A batch from the Grain loader has
the same keys with a leading batch dimension: images [B, H, W], strings as numpy str arrays [B].

`TASKS` (the task names) is read from the degradation registry when asked for, so a newly
registered degradation is a valid task everywhere; this module imports nothing of ours.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import numpy as np

SEVERITIES = ("mild", "moderate", "severe")
QUALITY_LABELS = ("good", "usable", "reject")
MODALITIES = ("CT", "MRI", "PET", "fundus")
SPLITS = ("train", "val", "bench")


def task_names():
  """The registered degradation tasks (data_pipeline/degradations/), in config order."""
  from data_pipeline.degradations import registry  # pylint: disable=g-import-not-at-top  # Cycle.

  return registry.names()


def __getattr__(name):
  """`example.TASKS` is the registry's task names (module attribute computed on access)."""
  if name == "TASKS":
    return task_names()
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclasses.dataclass(frozen=True)
class Field:
  """One field: `kind` is 'image' (float32 [H, W] in [0, 1]), 'str', 'json' (str) or 'bool'.

  `choices` is a tuple of allowed values, or a function returning them (read when validating).
  """

  name: str
  kind: str
  choices: tuple | Callable[[], tuple] = ()
  doc: str = ""


EXAMPLE_FIELDS = (
  Field("id", "str", doc="stable unique id: source:file:slice:task:k"),
  Field("split", "str", SPLITS, "split by patient"),
  Field("patient_id", "str", doc="no patient appears in two splits"),
  Field("low", "image", doc="degraded input, float32 [H, W] in [0, 1]"),
  Field("high", "image", doc="reference, float32 [H, W] in [0, 1]"),
  Field("modality", "str", MODALITIES),
  Field("anatomy", "str", doc="head, brain, chest, abdomen, retina, ..."),
  Field("task", "str", task_names, "a registered degradation"),
  Field("severity", "str", SEVERITIES),
  Field("quality_label", "str", QUALITY_LABELS, "the task's label rule, see descriptions.py"),
  Field("degradation_params", "json", doc="every degradation parameter, JSON"),
  Field("provenance", "json", doc="package/file/slice (or dataset path), JSON"),
  Field("simulated", "bool", doc="True for PET simulated from MRI"),
  Field("instruction", "str", doc="task instruction text"),
  Field("description", "str", doc="five-aspect quality description ending 'Overall, ...'"),
)
FIELD_NAMES = tuple(field.name for field in EXAMPLE_FIELDS)
IMAGE_FIELDS = tuple(field.name for field in EXAMPLE_FIELDS if field.kind == "image")


def validate_example(example, image_size=None):
  """Raises ValueError naming the field if `example` breaks the contract; returns it otherwise."""
  missing = set(FIELD_NAMES) - set(example)
  extra = set(example) - set(FIELD_NAMES)
  if missing or extra:
    raise ValueError(f"example fields: missing {sorted(missing)}, unexpected {sorted(extra)}")
  for field in EXAMPLE_FIELDS:
    value = example[field.name]
    if field.kind == "image":
      if not isinstance(value, np.ndarray) or value.dtype != np.float32 or value.ndim != 2:
        raise ValueError(
          f"{field.name}: expected float32 [H, W], got "
          f"{type(value).__name__} {getattr(value, 'dtype', '')} "
          f"{getattr(value, 'shape', '')}"
        )
      if image_size is not None and value.shape != (image_size, image_size):
        raise ValueError(
          f"{field.name}: expected shape {(image_size, image_size)}, got {value.shape}"
        )
      if not np.all(np.isfinite(value)) or value.min() < 0.0 or value.max() > 1.0:
        raise ValueError(f"{field.name}: values must be finite and in [0, 1]")
    elif field.kind == "bool":
      if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{field.name}: expected bool, got {type(value).__name__}")
    else:
      if not isinstance(value, str) or not value:
        raise ValueError(f"{field.name}: expected a non-empty str, got {value!r:.60}")
      choices = field.choices() if callable(field.choices) else field.choices
      if choices and value not in choices:
        raise ValueError(f"{field.name}: {value!r} not in {choices}")
      if field.kind == "json":
        json.loads(value)
  if example["low"].shape != example["high"].shape:
    raise ValueError(f"low/high shapes differ: {example['low'].shape} vs {example['high'].shape}")
  return example
