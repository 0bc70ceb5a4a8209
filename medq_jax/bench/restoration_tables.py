"""Restoration tables in the MedQ-UNI paper's Table 1 layout, built by pure functions.

Input: `MetricRow`s (one per case x method). Groups follow the paper: CT denoising (ldct),
MRI restoration (mri_undersampling, mri_motion, mri_noise), PET denoising (pet_lowcount); any
other (modality, task) gets its own group after them. Every cell is PSNR or SSIM
mean +- population std with its n; a cell with n=0 is "--", never a number. Each row says
which bound limits it: the identity (degraded input) from below, the VAE ceiling (the VAE's
encode->decode of the reference, which the model's decoder cannot beat on average) from above.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from data_pipeline.example import SEVERITIES
from medq_jax.bench.restoration import Stat, summarize

METHODS = ("identity", "classical", "vae_ceiling", "model")
METHOD_TITLES = {
  "identity": "Identity (degraded input)",
  "classical": "Classical baseline",
  "vae_ceiling": "VAE ceiling",
  "model": "Model (restored)",
}
ALL = "all"


@dataclasses.dataclass(frozen=True)
class MetricRow:
  """PSNR (dB) and SSIM of one method on one case; method_name names the classical baseline."""

  case_id: str
  modality: str
  task: str
  severity: str
  method: str  # one of METHODS
  method_name: str
  psnr: float
  ssim: float


@dataclasses.dataclass(frozen=True)
class TableGroup:
  title: str
  modality: str
  tasks: tuple[str, ...]


TABLE1_GROUPS = (
  TableGroup("CT denoising", "CT", ("ldct",)),
  TableGroup("MRI restoration", "MRI", ("mri_undersampling", "mri_motion", "mri_noise")),
  TableGroup("PET denoising", "PET", ("pet_lowcount",)),
)


@dataclasses.dataclass(frozen=True)
class Cell:
  psnr: Stat
  ssim: Stat


@dataclasses.dataclass(frozen=True)
class TableRow:
  """One row of a group: a task at one severity, a task over all, or the whole modality."""

  group: str
  modality: str
  task: str  # a task name or ALL
  severity: str  # a severity or ALL
  cells: dict[str, Cell]  # method -> Cell
  bound: str

  @property
  def label(self) -> str:
    if self.task == ALL:
      return f"{self.modality}: all tasks, all severities"
    return f"{self.task} / {self.severity}" if self.severity != ALL else f"{self.task} / all"


def groups_for(rows: Sequence[MetricRow]) -> list[TableGroup]:
  """The paper's three groups, then one group per (modality, task) they do not cover."""
  covered = {(g.modality, t) for g in TABLE1_GROUPS for t in g.tasks}
  extra = sorted({(r.modality, r.task) for r in rows} - covered)
  return list(TABLE1_GROUPS) + [TableGroup(f"Other: {m} {t}", m, (t,)) for m, t in extra]


def severities_in(rows: Sequence[MetricRow]) -> list[str]:
  """The known severities in order, then any others found in the rows (sorted)."""
  return list(SEVERITIES) + sorted({r.severity for r in rows} - set(SEVERITIES))


def cell(rows: Sequence[MetricRow], method: str) -> Cell:
  chosen = [r for r in rows if r.method == method]
  return Cell(summarize(r.psnr for r in chosen), summarize(r.ssim for r in chosen))


def bound_note(cells: dict[str, Cell]) -> str:
  """Which bound limits the row: identity from below, VAE ceiling from above (PSNR means)."""
  identity, ceiling, model = (cells[m].psnr for m in ("identity", "vae_ceiling", "model"))
  if identity.n == 0 or math.isnan(identity.mean):
    return "no cases"
  if ceiling.n == 0 or math.isnan(ceiling.mean):
    return "identity only (no VAE ceiling given)"
  gap = ceiling.mean - identity.mean
  if gap < 0:
    note = f"VAE-LIMITED: ceiling {-gap:.2f} dB below identity"
  else:
    note = f"ceiling {gap:.2f} dB above identity"
  if model.n and not math.isnan(model.mean):
    if model.mean > ceiling.mean:
      note += "; model above ceiling"
    elif model.mean < identity.mean:
      note += "; model below identity"
  return note


def _row(group: TableGroup, rows, task: str, severity: str) -> TableRow:
  selected = [
    r
    for r in rows
    if r.modality == group.modality
    and r.task in group.tasks
    and (task == ALL or r.task == task)
    and (severity == ALL or r.severity == severity)
  ]
  cells = {method: cell(selected, method) for method in METHODS}
  return TableRow(group.title, group.modality, task, severity, cells, bound_note(cells))


def group_rows(group: TableGroup, rows: Sequence[MetricRow]) -> list[TableRow]:
  """Per task: one row per severity then 'all'; last, the modality over all its tasks."""
  severities = severities_in(rows)
  out = []
  for task in group.tasks:
    out += [_row(group, rows, task, s) for s in severities]
    out.append(_row(group, rows, task, ALL))
  if len(group.tasks) > 1:
    out.append(_row(group, rows, ALL, ALL))
  return out


def headline_rows(rows: Sequence[MetricRow], groups: Sequence[TableGroup]) -> dict[str, TableRow]:
  """{group title: the row over all its tasks and severities} (the paper's Table 1 cells)."""
  return {g.title: _row(g, rows, ALL, ALL) for g in groups}


def fmt(stat: Stat, digits: int) -> str:
  """'29.92 ± 2.57 (n=12)'; '-- (n=0)' when nothing was measured."""
  if stat.n == 0 or math.isnan(stat.mean):
    return f"-- (n={stat.n})"
  extra = f", {stat.n_infinite} identical" if stat.n_infinite else ""
  return f"{stat.mean:.{digits}f} ± {stat.std:.{digits}f} (n={stat.n}{extra})"


def headline_table(rows: Sequence[MetricRow], groups: Sequence[TableGroup]) -> tuple:
  """Methods as rows, per group PSNR and SSIM columns (paper Table 1); (columns, rows)."""
  heads = headline_rows(rows, groups)
  columns = ["Method"]
  for g in groups:
    columns += [f"{g.title} PSNR ↑", f"{g.title} SSIM ↑"]
  table = []
  for method in METHODS:
    line = [METHOD_TITLES[method]]
    for g in groups:
      c = heads[g.title].cells[method]
      line += [fmt(c.psnr, 2), fmt(c.ssim, 3)]
    table.append(line)
  return columns, table


def full_table(group_table_rows: Sequence[TableRow]) -> tuple:
  """One group's rows: label, per method PSNR and SSIM, the bound note; (columns, rows)."""
  columns = ["Rows"]
  for method in METHODS:
    title = METHOD_TITLES[method]
    columns += [f"{title} PSNR", f"{title} SSIM"]
  columns.append("Bound")
  table = []
  for row in group_table_rows:
    line = [row.label]
    for method in METHODS:
      line += [fmt(row.cells[method].psnr, 2), fmt(row.cells[method].ssim, 3)]
    table.append(line + [row.bound])
  return columns, table


SUMMARY_COLUMNS = (
  "group",
  "modality",
  "task",
  "severity",
  "method",
  "count",
  "psnr_mean",
  "psnr_std",
  "ssim_mean",
  "ssim_std",
  "n_infinite_psnr",
)


def summary_rows(group_table_rows: Sequence[TableRow]) -> list[list]:
  """Numbers of every cell, one line per (row, method), in the reference CSV's layout
  (count, psnr_mean, psnr_std, ssim_mean, ssim_std); empty cells are count 0 and blanks."""
  out = []
  for row in group_table_rows:
    for method in METHODS:
      c = row.cells[method]
      numbers = [c.psnr.mean, c.psnr.std, c.ssim.mean, c.ssim.std]
      numbers = ["" if math.isnan(x) else x for x in numbers]
      out.append(
        [row.group, row.modality, row.task, row.severity, method, c.ssim.n]
        + numbers
        + [c.psnr.n_infinite]
      )
  return out


# MedQ-UNI's own row of the paper's Table 1 (its test data and checkpoint, not this run's):
# {group: (PSNR mean, PSNR std, SSIM mean, SSIM std)}.
PAPER_MEDQ_UNI = {
  "CT denoising": (36.42, 4.10, 0.935, 0.050),
  "MRI restoration": (29.92, 2.57, 0.905, 0.042),
  "PET denoising": (36.44, 6.46, 0.974, 0.028),
}


def paper_table() -> tuple:
  columns = ["Method"]
  row = ["MedQ-UNI (paper Table 1, its data)"]
  for title, (pm, ps, sm, ss) in PAPER_MEDQ_UNI.items():
    columns += [f"{title} PSNR", f"{title} SSIM"]
    row += [f"{pm:.2f} ± {ps:.2f}", f"{sm:.3f} ± {ss:.3f}"]
  return columns, [row]


def row_record(row: TableRow) -> dict:
  """A TableRow as JSON-able data (NaN stays NaN; the writer maps it to null)."""
  return {
    "group": row.group,
    "modality": row.modality,
    "task": row.task,
    "severity": row.severity,
    "bound": row.bound,
    "cells": {
      method: {"psnr": dataclasses.asdict(c.psnr), "ssim": dataclasses.asdict(c.ssim)}
      for method, c in row.cells.items()
    },
  }
