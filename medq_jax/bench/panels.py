"""Qualitative restoration panels: degraded | restored | reference | |error| with the description.

`select_cases` draws a deterministic sample spread over (task, severity) strata; `panel`
draws one case (matplotlib Agg, like the other report plots) with PSNR/SSIM in the titles and
the generated (and reference) description wrapped under the images.
"""

from __future__ import annotations

import collections
import re
import textwrap
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from data_pipeline.example import SEVERITIES
from medq_jax.bench.plots import _save

_MAX_TEXT = 700  # characters of each description shown under a panel


def select_cases(cases: Sequence, count: int, seed: int = 0, order: Sequence[str] = ()) -> list:
  """Up to `count` cases spread over tasks and severities, a function of (case ids, count,
  seed) only. Strata (task, severity) are visited task by task, each task starting at a
  different severity (task i at its i-th), so the first picks differ in task and severity;
  within a stratum cases come in a seeded random order. `order` ranks the tasks."""
  by_task = collections.defaultdict(lambda: collections.defaultdict(list))
  for case in sorted(cases, key=lambda c: c.id):
    by_task[case.task][case.severity].append(case)
  task_rank = {task: i for i, task in enumerate(order)}
  severity_rank = {severity: i for i, severity in enumerate(SEVERITIES)}
  rng = np.random.default_rng(seed)
  per_task = []
  for i, task in enumerate(sorted(by_task, key=lambda t: (task_rank.get(t, len(task_rank)), t))):
    levels = sorted(by_task[task], key=lambda s: (severity_rank.get(s, len(severity_rank)), s))
    levels = levels[i % len(levels) :] + levels[: i % len(levels)]
    per_task.append(
      [[by_task[task][s][j] for j in rng.permutation(len(by_task[task][s]))] for s in levels]
    )
  queues = [t[r] for r in range(max(map(len, per_task), default=0)) for t in per_task if r < len(t)]
  chosen = []
  while len(chosen) < count and any(queues):
    for queue in queues:
      if queue and len(chosen) < count:
        chosen.append(queue.pop(0))
  return chosen


def file_name(index: int, case_id: str) -> str:
  return f"{index:02d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', case_id)[:80]}.png"


def _wrap(label: str, text: str) -> str:
  text = " ".join(str(text).split())
  if len(text) > _MAX_TEXT:
    text = text[:_MAX_TEXT] + " [...]"
  return textwrap.fill(f"{label}: {text or '(empty)'}", width=160)


def panel(
  case,
  degraded: np.ndarray,
  restored: np.ndarray,
  reference: np.ndarray,
  metrics: dict[str, tuple[float, float]],
  path: str,
  data_range: float = 1.0,
) -> str:
  """One PNG for `case`; metrics: {'identity'|'model': (psnr, ssim)} shown in the titles."""
  error = np.abs(restored - reference)
  figure = plt.figure(figsize=(12.0, 5.2), dpi=100)
  grid = figure.add_gridspec(2, 4, height_ratios=(3.2, 1.4))
  titles = (
    ("degraded", degraded, metrics.get("identity")),
    ("restored", restored, metrics.get("model")),
    ("reference", reference, None),
  )
  for column, (name, image, values) in enumerate(titles):
    axis = figure.add_subplot(grid[0, column])
    axis.imshow(image, cmap="gray", vmin=0.0, vmax=data_range)
    if values is not None:
      name = f"{name}\nPSNR {values[0]:.2f} dB, SSIM {values[1]:.3f}"
    axis.set_title(name, fontsize=9)
    axis.axis("off")
  axis = figure.add_subplot(grid[0, 3])
  shown = axis.imshow(error, cmap="magma", vmin=0.0, vmax=max(float(error.max()), 1e-6))
  axis.set_title(f"|restored - reference|\nmax {float(error.max()):.3f}", fontsize=9)
  axis.axis("off")
  figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.04)
  text_axis = figure.add_subplot(grid[1, :])
  text_axis.axis("off")
  text = (
    _wrap("Generated", case.description) + "\n" + _wrap("Reference", case.reference_description)
  )
  text_axis.text(0.0, 1.0, text, va="top", ha="left", fontsize=7.5, family="monospace")
  figure.suptitle(f"{case.id}  ({case.modality}, {case.task}, {case.severity})", fontsize=10)
  return _save(figure, path)
