"""The MedQ-Engine loop state, persisted atomically after every phase so that a killed run
resumes where it stopped.

One JSON file (`<workdir>/state.json`, schema `medq-engine-state`, version `SCHEMA_VERSION`):
the iteration, the last phase completed in it, each iteration's record (what every completed
phase produced: failures, prototypes' file, candidates, the drawn sample, oracle answers,
routes, the review queue's files, decisions, dedup result, accumulated data file, statistics),
the accumulated data ids, the dev accuracy history, the checkpoints and why the loop stopped.
A save writes a temporary file in the same directory, fsyncs it, renames it over the state and
fsyncs the directory: a kill leaves the previous state or the new one, never a mix. A file that
is not valid JSON, another schema, an unknown version or a missing field is one `StateError`
naming the file.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from data_pipeline import atomic_files

SCHEMA = "medq-engine-state"
SCHEMA_VERSION = 1
# The phases of one iteration, in order (review_export writes the queue; review imports the
# decisions once every reviewed sample has one).
PHASES = (
  "evaluate",
  "cluster",
  "retrieve",
  "sample",
  "annotate",
  "review_export",
  "review",
  "dedup",
  "accumulate",
  "finetune",
)


class StateError(ValueError):
  """The state file cannot be used; the message names it."""


@dataclasses.dataclass
class LoopState:
  """`phase`: the last phase completed in `iteration` ("" = none yet). `records[t]`: phase name
  -> that phase's output for iteration t. `stopped`: why the loop ended ("" = running)."""

  config: dict[str, Any] = dataclasses.field(default_factory=dict)
  pool: dict[str, Any] = dataclasses.field(default_factory=dict)
  iteration: int = 0
  phase: str = ""
  records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  accumulated: list[str] = dataclasses.field(default_factory=list)
  data_files: list[str] = dataclasses.field(default_factory=list)
  dev_accuracy: list[float] = dataclasses.field(default_factory=list)
  checkpoints: list[str] = dataclasses.field(default_factory=list)
  stopped: str = ""

  def record(self) -> dict[str, Any]:
    """The current iteration's record (created on first use)."""
    while len(self.records) <= self.iteration:
      self.records.append({})
    return self.records[self.iteration]

  def done(self, phase: str) -> bool:
    """Whether `phase` of the current iteration is complete."""
    if phase not in PHASES:
      raise ValueError(f"phase: unknown {phase!r}; phases: {PHASES}")
    return bool(self.phase) and PHASES.index(self.phase) >= PHASES.index(phase)

  def to_json(self) -> dict[str, Any]:
    return {"schema": SCHEMA, "version": SCHEMA_VERSION, **dataclasses.asdict(self)}


atomic_write_text = atomic_files.atomic_write_text  # the engine's callers use this name


def save(state: LoopState, path: str) -> None:
  """Persists `state` atomically (see the module docstring)."""
  atomic_write_text(path, json.dumps(state.to_json(), indent=1, sort_keys=True, allow_nan=False))


def load(path: str) -> LoopState | None:
  """The state at `path`, or None when there is none yet; StateError naming the file if bad."""
  raw = atomic_files.read_json(path, "not a valid JSON state file", StateError)
  if raw is None:
    return None
  if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
    raise StateError(f"{path}: not a {SCHEMA} file (schema {_get(raw, 'schema')!r})")
  if raw.get("version") != SCHEMA_VERSION:
    raise StateError(
      f"{path}: state version {raw.get('version')!r}, this code reads version {SCHEMA_VERSION} "
      "(start a new workdir or use the matching medq-jax)"
    )
  fields = {field.name: field for field in dataclasses.fields(LoopState)}
  missing = sorted(set(fields) - set(raw))
  if missing:
    raise StateError(f"{path}: state lacks fields {missing}")
  values = {name: raw[name] for name in fields}
  if not isinstance(values["iteration"], int) or values["iteration"] < 0:
    raise StateError(f"{path}: iteration must be an int >= 0, got {values['iteration']!r}")
  if values["phase"] not in ("", *PHASES):
    raise StateError(f"{path}: unknown phase {values['phase']!r}; phases: {PHASES}")
  for name in ("records", "accumulated", "data_files", "dev_accuracy", "checkpoints"):
    if not isinstance(values[name], list):
      raise StateError(f"{path}: {name} must be a list, got {type(values[name]).__name__}")
  return LoopState(**values)


def _get(raw: Any, key: str) -> Any:
  return raw.get(key) if isinstance(raw, dict) else type(raw).__name__
