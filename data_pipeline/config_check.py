"""Validates a data config before any work starts, with errors that name the offending field."""

import os

from data_pipeline import example as example_lib

SOURCES = ("medq-sample", "ixi", "aapm_mayo", "udpet", "folder")
_PER_SEVERITY = {
    "ldct": ("photons",),
    "mri_undersampling": ("acceleration", "center_fraction"),
    "mri_motion": ("degrees", "translation_mm", "num_transforms"),
    "mri_noise": ("sigma",),
    "pet_lowcount": ("dose_reduction",),
}


class ConfigError(ValueError):
  """A data config field is wrong; the message starts with `config.<field>`."""


def validate_config(config):
  """Checks tasks, severities, per-task parameters, split fractions and dataset paths."""
  tasks = tuple(config.tasks)
  if not tasks:
    raise ConfigError("config.tasks: empty; choose from " + ", ".join(example_lib.TASKS))
  for task in tasks:
    if task not in example_lib.TASKS:
      raise ConfigError(f"config.tasks: unknown task {task!r}; known: {example_lib.TASKS}")
  for severity in config.severities:
    if severity not in example_lib.SEVERITIES:
      raise ConfigError(f"config.severities: {severity!r} out of range {example_lib.SEVERITIES}")
  for modality, modality_tasks in config.modality_tasks.items():
    if modality not in example_lib.MODALITIES:
      raise ConfigError(f"config.modality_tasks.{modality}: unknown modality")
    for task in modality_tasks:
      if task not in example_lib.TASKS:
        raise ConfigError(f"config.modality_tasks.{modality}: unknown task {task!r}")
  for severity, label in config.quality_label_by_severity.items():
    if severity not in example_lib.SEVERITIES or label not in example_lib.QUALITY_LABELS:
      raise ConfigError(f"config.quality_label_by_severity.{severity}: {label!r} invalid")
  for task, fields in _PER_SEVERITY.items():
    for field in fields:
      values = tuple(config[task][field])
      if len(values) != len(example_lib.SEVERITIES):
        raise ConfigError(f"config.{task}.{field}: need one value per severity "
                          f"{example_lib.SEVERITIES}, got {values}")
      if any(float(v) <= 0 for v in values):
        raise ConfigError(f"config.{task}.{field}: values must be > 0, got {values}")
  for i, fraction in enumerate(config.mri_undersampling.center_fraction):
    if fraction >= 1.0 / config.mri_undersampling.acceleration[i]:
      raise ConfigError("config.mri_undersampling.center_fraction: the centre must be smaller "
                        "than the sampled fraction 1/acceleration")
  if config.mri_noise.model not in ("rician", "torchio_gaussian"):
    raise ConfigError(f"config.mri_noise.model: {config.mri_noise.model!r} not in "
                      "('rician', 'torchio_gaussian')")
  if int(config.image_size) < 8:
    raise ConfigError(f"config.image_size: {config.image_size} too small (need >= 8)")
  fractions = dict(config.split_fractions)
  if set(fractions) != set(example_lib.SPLITS) or any(v < 0 for v in fractions.values()):
    raise ConfigError(f"config.split_fractions: need non-negative {example_lib.SPLITS}")
  if abs(sum(fractions.values()) - 1.0) > 1e-6:
    raise ConfigError(f"config.split_fractions: must sum to 1, got {fractions}")
  if config.source not in SOURCES:
    raise ConfigError(f"config.source: unknown source {config.source!r}; known: {SOURCES}")
  if config.source != "medq-sample":
    path = config.paths[config.source]
    if not path:
      raise ConfigError(f"config.paths.{config.source}: missing dataset path for "
                        f"source {config.source!r}")
    if not os.path.isdir(path):
      raise ConfigError(f"config.paths.{config.source}: {path!r} is not a directory")
  if config.labeller not in ("template", "chat"):
    raise ConfigError(f"config.labeller: {config.labeller!r} not in ('template', 'chat')")
  for modality, repeats in config.examples_per_slice_by_modality.items():
    if modality not in example_lib.MODALITIES or int(repeats) < 1:
      raise ConfigError(f"config.examples_per_slice_by_modality.{modality}: need a known "
                        f"modality and >= 1, got {repeats}")
  if int(config.examples_per_shard) < 1 or int(config.examples_per_slice_task) < 1:
    raise ConfigError("config.examples_per_shard / examples_per_slice_task: must be >= 1")
  return config
