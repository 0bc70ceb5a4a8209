"""Validates a data config before any work starts, with errors that name the offending field."""

import numbers
import os

from data_pipeline import example as example_lib
from data_pipeline.degradations import registry

SOURCES = ("medq-sample", "ixi", "aapm_mayo", "udpet", "folder")


class ConfigError(ValueError):
  """A data config field is wrong; the message starts with `config.<field>`."""


def validate_config(config):
  """Checks tasks, severities, per-task parameters, split fractions and dataset paths."""
  known_tasks = registry.names()
  tasks = tuple(config.tasks)
  if not tasks:
    raise ConfigError("config.tasks: empty; choose from " + ", ".join(known_tasks))
  for task in tasks:
    if task not in known_tasks:
      raise ConfigError(f"config.tasks: unknown task {task!r}; known: {known_tasks}")
  for severity in config.severities:
    if severity not in example_lib.SEVERITIES:
      raise ConfigError(f"config.severities: {severity!r} out of range {example_lib.SEVERITIES}")
  for modality, modality_tasks in config.modality_tasks.items():
    if modality not in example_lib.MODALITIES:
      raise ConfigError(f"config.modality_tasks.{modality}: unknown modality")
    for task in modality_tasks:
      if task not in known_tasks:
        raise ConfigError(
          f"config.modality_tasks.{modality}: unknown task {task!r}; known: {known_tasks}"
        )
  for severity, label in config.quality_label_by_severity.items():
    if severity not in example_lib.SEVERITIES or label not in example_lib.QUALITY_LABELS:
      raise ConfigError(f"config.quality_label_by_severity.{severity}: {label!r} invalid")
  for task in known_tasks:
    if task in config:
      validate_task_params(registry.get(task), config[task])
    elif task in tasks:
      raise ConfigError(f"config.{task}: missing the task's parameter sub-config")
  for task in tasks:
    for severity in config.severities:
      try:
        label = registry.get(task).quality_label(severity, config)
      except KeyError:
        raise ConfigError(
          f"config.quality_label_by_severity: no label for severity {severity!r}"
        ) from None
      if label not in example_lib.QUALITY_LABELS:
        raise ConfigError(
          f"config.{task}: its label rule gives {label!r} at {severity!r}; "
          f"expected one of {example_lib.QUALITY_LABELS}"
        )
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
      raise ConfigError(
        f"config.paths.{config.source}: missing dataset path for source {config.source!r}"
      )
    if not os.path.isdir(path):
      raise ConfigError(f"config.paths.{config.source}: {path!r} is not a directory")
  if config.labeller not in ("template", "chat"):
    raise ConfigError(f"config.labeller: {config.labeller!r} not in ('template', 'chat')")
  for modality, repeats in config.examples_per_slice_by_modality.items():
    if modality not in example_lib.MODALITIES or int(repeats) < 1:
      raise ConfigError(
        f"config.examples_per_slice_by_modality.{modality}: need a known "
        f"modality and >= 1, got {repeats}"
      )
  if int(config.examples_per_shard) < 1 or int(config.examples_per_slice_task) < 1:
    raise ConfigError("config.examples_per_shard / examples_per_slice_task: must be >= 1")
  return config


def validate_task_params(degradation, task_config):
  """Checks `config.<task>` against its registered degradation: the fields, one positive value
  per severity for per-severity fields, the type of the others, and the module's own check."""
  at = f"config.{degradation.name}"
  unknown = sorted(set(task_config) - set(degradation.defaults))
  if unknown:
    raise ConfigError(
      f"{at}.{unknown[0]}: unknown parameter; known: {sorted(degradation.defaults)}"
    )
  for field, default in degradation.defaults.items():
    if field not in task_config:
      raise ConfigError(f"{at}.{field}: missing (default {default!r})")
    value = task_config[field]
    if field in degradation.per_severity:
      values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
      if len(values) != len(example_lib.SEVERITIES):
        raise ConfigError(
          f"{at}.{field}: need one value per severity {example_lib.SEVERITIES}, got {value!r}"
        )
      if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{at}.{field}: expected numbers, got {values!r}")
      if any(float(v) <= 0 for v in values):
        raise ConfigError(f"{at}.{field}: values must be > 0, got {values}")
    elif isinstance(default, str) and not isinstance(value, str):
      raise ConfigError(f"{at}.{field}: expected a string, got {value!r}")
    elif isinstance(default, numbers.Real) and (
      not isinstance(value, numbers.Real) or isinstance(value, bool)
    ):
      raise ConfigError(f"{at}.{field}: expected a number, got {value!r}")
  if degradation.check is not None:
    for severity in example_lib.SEVERITIES:
      try:
        degradation.check(degradation.params_at(task_config, severity))
      except registry.ParamError as error:
        raise ConfigError(f"{at}.{error.field}: {error.message} (at severity {severity})") from None
