"""Failure mining (MedQ-Engine §2.2, Eq. 1): R sampled runs on dev -> persistent failures and
the per-capability error e_k.

An item's error rate is the fraction of the R runs it got wrong; it is a persistent failure when
that rate exceeds gamma (strictly, as in the paper). Its capability vector c is multi-hot over the
values of its metadata fields (by default modality, question type, degradation level: one
dimension per value seen, named ``field=value``), or, with ``cross=True``, one-hot over their
combinations (``modality=MRI|question_type=What|degradation_level=mild``). Eq. 1:
e_k = |failures with c_k = 1| / |dev items with c_k = 1|.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

CAPABILITY_FIELDS = ("modality", "question_type", "degradation_level")
_ID_FIELDS = ("id", "index", "source_id")


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """One dev evaluation: per-item `error_rate` [N] and `failed` [N] (rate > gamma), the
  capability `names` [K] and `capabilities` [N, K] (bool), and `errors` {name: e_k}."""

  error_rate: np.ndarray
  failed: np.ndarray
  names: list[str]
  capabilities: np.ndarray
  errors: dict[str, float]
  gamma: float
  runs: int


def error_rates(correct) -> np.ndarray:
  """[R, N] correctness per run (bool, or 0/1) -> [N] fraction of runs wrong (float64)."""
  correct = np.asarray(correct)
  if correct.ndim != 2:
    raise ValueError(f"correct: expected [runs, items], got shape {correct.shape}")
  if correct.shape[0] < 1:
    raise ValueError("correct: expected at least one run, got 0")
  if correct.dtype != bool:
    if not np.issubdtype(correct.dtype, np.number):
      raise ValueError(f"correct: expected bool or 0/1 values, got dtype {correct.dtype}")
    bad = ~np.isin(correct, (0, 1))
    if bad.any():
      run, item = np.argwhere(bad)[0]
      raise ValueError(f"correct[{run}, {item}]: expected bool or 0/1, got {correct[run, item]!r}")
  return 1.0 - correct.astype(np.float64).mean(axis=0)


def persistent_failures(rates, gamma: float) -> np.ndarray:
  """[N] error rates -> [N] bool: rate > gamma (the paper's strict inequality)."""
  if not (np.isfinite(gamma) and 0.0 <= gamma <= 1.0):
    raise ValueError(f"gamma: expected a number in [0, 1], got {gamma!r}")
  return np.asarray(rates, np.float64) > gamma


def _item_name(item: Mapping, position: int) -> str:
  for field in _ID_FIELDS:
    if field in item:
      return f"item {position} ({field}={item[field]!r})"
  return f"item {position}"


def capability_vectors(
  items: Sequence[Mapping], fields: Sequence[str] = CAPABILITY_FIELDS, cross: bool = False
) -> tuple[list[str], np.ndarray]:
  """Item metadata -> (names [K], bool [N, K]); names sorted; ValueError naming a missing field."""
  if not fields:
    raise ValueError("fields: expected at least one metadata field")
  keys = []
  for position, item in enumerate(items):
    values = []
    for field in fields:
      value = item.get(field) if isinstance(item, Mapping) else None
      if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(
          f"{_item_name(item, position) if isinstance(item, Mapping) else f'item {position}'}: "
          f"missing capability metadata {field!r} (expected a value for each of {list(fields)})"
        )
      values.append(f"{field}={value}")
    keys.append(["|".join(values)] if cross else values)
  names = sorted({name for item_keys in keys for name in item_keys})
  column = {name: k for k, name in enumerate(names)}
  matrix = np.zeros((len(keys), len(names)), bool)
  for row, item_keys in enumerate(keys):
    matrix[row, [column[name] for name in item_keys]] = True
  return names, matrix


def capability_errors(failed, capabilities, names: Sequence[str]) -> dict[str, float]:
  """Eq. 1: e_k = |failed items with c_k| / |items with c_k| for each capability k."""
  failed = np.asarray(failed, bool)
  capabilities = np.asarray(capabilities, bool)
  if capabilities.shape != (failed.shape[0], len(names)):
    raise ValueError(
      f"capabilities: expected shape {(failed.shape[0], len(names))}, got {capabilities.shape}"
    )
  totals = capabilities.sum(axis=0)
  if (totals == 0).any():
    empty = [names[k] for k in np.flatnonzero(totals == 0)]
    raise ValueError(f"capabilities {empty}: no dev item has them (Eq. 1 divides by 0)")
  hits = (capabilities & failed[:, None]).sum(axis=0)
  return {name: float(h / t) for name, h, t in zip(names, hits, totals)}


def evaluate(
  correct,
  items: Sequence[Mapping],
  gamma: float,
  fields: Sequence[str] = CAPABILITY_FIELDS,
  cross: bool = False,
) -> Evaluation:
  """R runs' correctness [R, N] + the N items' metadata -> `Evaluation` (failures and e_k)."""
  rates = error_rates(correct)
  if rates.shape[0] == 0:
    raise ValueError("correct: no dev items (0 columns); nothing to evaluate")
  if len(items) != rates.shape[0]:
    raise ValueError(
      f"items: expected {rates.shape[0]} (one per column of correct), got {len(items)}"
    )
  failed = persistent_failures(rates, gamma)
  names, capabilities = capability_vectors(items, fields, cross)
  errors = capability_errors(failed, capabilities, names)
  return Evaluation(
    rates, failed, names, capabilities, errors, float(gamma), int(np.shape(correct)[0])
  )
