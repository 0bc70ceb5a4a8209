"""The example contract: what `data_pipeline` yields, field by field (the model side relies on it).

One example is a dict with exactly the fields of `EXAMPLE_FIELDS`. Images are single channel,
float32 in [0, 1], shape [H, W] (H = W = config.image_size). A batch from the Grain loader has
the same keys with a leading batch dimension: images [B, H, W], strings as numpy str arrays [B].
"""

import dataclasses
import json

import numpy as np

TASKS = ("ldct", "mri_undersampling", "mri_motion", "mri_noise", "pet_lowcount")
SEVERITIES = ("mild", "moderate", "severe")
QUALITY_LABELS = ("good", "usable", "reject")
MODALITIES = ("CT", "MRI", "PET", "fundus")
SPLITS = ("train", "val", "bench")


@dataclasses.dataclass(frozen=True)
class Field:
  """One field: `kind` is 'image' (float32 [H, W] in [0, 1]), 'str', 'json' (str) or 'bool'."""
  name: str
  kind: str
  choices: tuple = ()
  doc: str = ""


EXAMPLE_FIELDS = (
    Field("id", "str", doc="stable unique id: source:file:slice:task:k"),
    Field("split", "str", SPLITS, "split by patient"),
    Field("patient_id", "str", doc="no patient appears in two splits"),
    Field("low", "image", doc="degraded input, float32 [H, W] in [0, 1]"),
    Field("high", "image", doc="reference, float32 [H, W] in [0, 1]"),
    Field("modality", "str", MODALITIES),
    Field("anatomy", "str", doc="head, brain, chest, abdomen, retina, ..."),
    Field("task", "str", TASKS),
    Field("severity", "str", SEVERITIES),
    Field("quality_label", "str", QUALITY_LABELS, "from severity, see descriptions.py"),
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
        raise ValueError(f"{field.name}: expected float32 [H, W], got "
                         f"{type(value).__name__} {getattr(value, 'dtype', '')} "
                         f"{getattr(value, 'shape', '')}")
      if image_size is not None and value.shape != (image_size, image_size):
        raise ValueError(f"{field.name}: expected shape {(image_size, image_size)}, got {value.shape}")
      if not np.all(np.isfinite(value)) or value.min() < 0.0 or value.max() > 1.0:
        raise ValueError(f"{field.name}: values must be finite and in [0, 1]")
    elif field.kind == "bool":
      if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{field.name}: expected bool, got {type(value).__name__}")
    else:
      if not isinstance(value, str) or not value:
        raise ValueError(f"{field.name}: expected a non-empty str, got {value!r:.60}")
      if field.choices and value not in field.choices:
        raise ValueError(f"{field.name}: {value!r} not in {field.choices}")
      if field.kind == "json":
        json.loads(value)
  if example["low"].shape != example["high"].shape:
    raise ValueError(f"low/high shapes differ: {example['low'].shape} vs {example['high'].shape}")
  return example
