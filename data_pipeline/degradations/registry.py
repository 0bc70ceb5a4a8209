"""The degradation registry: every module of this package registers one `Degradation`.

big_vision `pp/registry.py` style: a module describes its degradation once (simulation,
modalities, per-severity defaults, label rule, description wording) and calls `register`;
the data config, validation, `degrade()`, the descriptions and the bench item generator look
it up by name. Modules are discovered by listing the package (`pkgutil.iter_modules` over its
`__path__`), so a new degradation is one new file in `data_pipeline/degradations/`.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import sys
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from data_pipeline import example as example_lib

_PACKAGE = "data_pipeline.degradations"
_NOT_DEGRADATIONS = ("registry",)  # Modules of the package that register nothing.
# The documented default label rule (config.quality_label_by_severity).
DEFAULT_QUALITY_LABELS = {"mild": "good", "moderate": "usable", "severe": "reject"}


class ParamError(ValueError):
  """A degradation parameter is invalid; `field` names it (reported as config.<task>.<field>)."""

  def __init__(self, field: str, message: str):
    super().__init__(f"{field}: {message}")
    self.field = field
    self.message = message


@dataclasses.dataclass(frozen=True, eq=False)
class Degradation:
  """Everything about one degradation task.

  simulate(image, params, rng, seed) -> (low, record): image float32 [S, S] in [0, 1];
  `params` is the task's config sub-tree with every per-severity field resolved to the value
  at the example's severity; rng = np.random.default_rng(seed); low float32 [S, S] in [0, 1];
  record a JSON-able dict of every parameter used (stored as `degradation_params`).
  """

  name: str  # The task name (`example["task"]`, the config sub-tree `config.<name>`).
  modalities: tuple[str, ...]  # Modalities it applies to by default (config.modality_tasks).
  simulate: Callable[..., tuple[Any, dict]]
  defaults: Mapping[str, Any]  # Config sub-tree defaults; per-severity fields hold 3-tuples.
  per_severity: tuple[str, ...]  # Fields with one value per severity (mild, moderate, severe).
  degradation_names: tuple[str, ...]  # Description phrasings of the degradation type.
  causes: tuple[str, ...]  # Description phrasings of its technical cause.
  bench_term: str  # Short term used in MedQ-Bench questions, e.g. "low-dose noise".
  causes_by_modality: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
  runlocal_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # runlocal.
  check: Callable[[Any], None] | None = None  # check(params) raises ParamError; per severity.
  label_rule: Callable[[str, Any], str] | None = None  # (severity, config) -> quality label.
  order: int = 100  # Position in config.tasks (ties by name); the paper's five use 10..50.

  def default_params(self, runlocal: bool = False) -> dict[str, Any]:
    """The config sub-tree for this task: `defaults`, with `runlocal_defaults` if runlocal."""
    params = dict(self.defaults)
    if runlocal:
      params.update(self.runlocal_defaults)
    return params

  def params_at(self, task_config, severity: str) -> ml_collections.ConfigDict:
    """The task's config sub-tree with each per-severity field at `severity`'s value."""
    level = example_lib.SEVERITIES.index(severity)
    params = dict(task_config)
    for field in self.per_severity:
      params[field] = task_config[field][level]
    return ml_collections.ConfigDict(params)

  def causes_for(self, modality: str) -> tuple[str, ...]:
    """Cause phrasings for a modality (e.g. sensor noise for fundus), else the general ones."""
    return tuple(self.causes_by_modality.get(modality, self.causes))

  def quality_label(self, severity: str, config) -> str:
    """The label rule: `label_rule` if set, else config.quality_label_by_severity[severity]."""
    if self.label_rule is not None:
      return str(self.label_rule(severity, config))
    return str(config.quality_label_by_severity[severity])


_REGISTRY: dict[str, Degradation] = {}


def _check_definition(degradation: Degradation) -> None:
  """Fails at import time, naming the degradation, when its definition is inconsistent."""
  where = f"degradation {degradation.name!r} ({degradation.simulate.__module__})"
  if not degradation.name.isidentifier():
    raise ValueError(f"{where}: name must be a Python identifier (it is a config field)")
  for modality in degradation.modalities:
    if modality not in example_lib.MODALITIES:
      raise ValueError(f"{where}: unknown modality {modality!r}; known: {example_lib.MODALITIES}")
  for modality in degradation.causes_by_modality:
    if modality not in example_lib.MODALITIES:
      raise ValueError(f"{where}: causes_by_modality has unknown modality {modality!r}")
  for field in degradation.per_severity:
    values = degradation.defaults.get(field)
    if not isinstance(values, tuple) or len(values) != len(example_lib.SEVERITIES):
      raise ValueError(
        f"{where}: per-severity field {field!r} needs a default tuple with one "
        f"value per severity {example_lib.SEVERITIES}, got {values!r}"
      )
  for field in degradation.runlocal_defaults:
    if field not in degradation.defaults:
      raise ValueError(f"{where}: runlocal_defaults field {field!r} is not in defaults")
  if not (degradation.degradation_names and degradation.causes and degradation.bench_term):
    raise ValueError(
      f"{where}: needs degradation_names, causes and bench_term for the "
      "descriptions and bench items"
    )


def register(degradation: Degradation) -> Degradation:
  """Adds a degradation under its name; returns it (modules do `DEGRADATION = register(...)`).

  A second registration of the same name from another module is an error; the same module
  registering again (a reload) replaces its entry.
  """
  _check_definition(degradation)
  previous = _REGISTRY.get(degradation.name)
  if previous is not None and previous.simulate.__module__ != degradation.simulate.__module__:
    raise ValueError(
      f"degradation {degradation.name!r}: registered twice, by "
      f"{previous.simulate.__module__} and {degradation.simulate.__module__}"
    )
  _REGISTRY[degradation.name] = degradation
  return degradation


def unregister(name: str) -> None:
  """Removes a registration (tests that add a temporary degradation clean up with this)."""
  _REGISTRY.pop(name, None)


def discover() -> None:
  """Imports every module of the package not imported yet (each registers itself)."""
  package = importlib.import_module(_PACKAGE)
  for module in pkgutil.iter_modules(package.__path__):
    full_name = f"{_PACKAGE}.{module.name}"
    if module.name in _NOT_DEGRADATIONS or module.name.startswith("_"):
      continue
    if full_name not in sys.modules:
      importlib.import_module(full_name)


def names() -> tuple[str, ...]:
  """Every registered task name, in (order, name) order."""
  discover()
  return tuple(sorted(_REGISTRY, key=lambda name: (_REGISTRY[name].order, name)))


def get(name: str) -> Degradation:
  """The degradation registered as `name`; ValueError listing the known names otherwise."""
  if name not in _REGISTRY:
    discover()
  if name not in _REGISTRY:
    raise ValueError(f"unknown task {name!r}; registered degradations: {names()}")
  return _REGISTRY[name]


def modality_tasks() -> dict[str, tuple[str, ...]]:
  """{modality: task names} for every modality that has a registered degradation."""
  tasks = {}
  for modality in example_lib.MODALITIES:
    applies = tuple(name for name in names() if modality in get(name).modalities)
    if applies:
      tasks[modality] = applies
  return tasks
