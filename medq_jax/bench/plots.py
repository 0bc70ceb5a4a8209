"""Report plots (matplotlib, Agg): per-modality accuracy bars, degradation level and
scope bars, and the four reasoning dimensions side by side."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from medq_jax.bench.perception import GroupAccuracy
from medq_jax.bench.prompts import DIMENSION_TITLES, DIMENSIONS
from medq_jax.bench.reasoning import ReasoningSummary


def _save(figure, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.tight_layout()
  figure.savefig(path)
  plt.close(figure)
  return path


def accuracy_bars(rows: Sequence[GroupAccuracy], group: str, path: str, title: str) -> str | None:
  """Bars of accuracy (%) per value of ``group`` with 95 % CI whiskers, the random guess, and
  the accuracy under VLMEvalKit's extraction rules as a marker."""
  selected = [r for r in rows if r.group == group]
  if not selected:
    return None
  x = np.arange(len(selected))
  accuracy = np.array([100 * r.accuracy for r in selected])
  errors = np.array(
    [
      [100 * (r.accuracy - r.ci_low) for r in selected],
      [100 * (r.ci_high - r.accuracy) for r in selected],
    ]
  )
  figure, axis = plt.subplots(figsize=(1.2 * len(selected) + 2.5, 3.4), dpi=120)
  axis.bar(x, accuracy, yerr=np.nan_to_num(errors), capsize=4, color="#4C72B0", label="accuracy")
  axis.scatter(
    x,
    [100 * r.random_guess for r in selected],
    marker="_",
    s=600,
    color="#C44E52",
    label="random guess",
    zorder=3,
  )
  axis.scatter(
    x,
    [100 * r.accuracy_vlmevalkit for r in selected],
    marker="D",
    s=22,
    color="#DD8452",
    label="VLMEvalKit rules",
    zorder=4,
  )
  for xi, r in zip(x, selected):
    axis.text(xi, 2, f"n={r.n}", ha="center", fontsize=7, color="white")
  axis.set_xticks(x, [r.value for r in selected], rotation=20)
  axis.set_ylim(0, 100)
  axis.set_ylabel("accuracy (%)")
  axis.set_title(title, fontsize=10)
  axis.legend(fontsize=7, loc="upper right")
  return _save(figure, path)


def dimension_bars(summaries: Sequence[ReasoningSummary], path: str, title: str) -> str | None:
  """The four dimensions side by side (0-2), one bar group per summary row."""
  if not summaries:
    return None
  x = np.arange(len(DIMENSIONS))
  width = 0.8 / len(summaries)
  figure, axis = plt.subplots(figsize=(6.0, 3.4), dpi=120)
  for position, summary in enumerate(summaries):
    means = [summary.means[d] for d in DIMENSIONS]
    errors = np.array(
      [
        [summary.means[d] - summary.ci[d][0] for d in DIMENSIONS],
        [summary.ci[d][1] - summary.means[d] for d in DIMENSIONS],
      ]
    )
    axis.bar(
      x + (position - (len(summaries) - 1) / 2) * width,
      means,
      width,
      yerr=np.nan_to_num(errors),
      capsize=3,
      label=f"{summary.group} (n={summary.n_items}, overall {summary.overall:.2f}/8)",
    )
  axis.set_xticks(x, [DIMENSION_TITLES[d] for d in DIMENSIONS])
  axis.set_ylim(0, 2.1)
  axis.set_ylabel("score (0-2)")
  axis.set_title(title, fontsize=10)
  axis.legend(fontsize=7)
  return _save(figure, path)
