"""Restoration scoring: PSNR and SSIM (mean +- std per task) from arrays.

Images are float [H, W] in [0, 1] (``data_range=1``), compared with scikit-image's
`peak_signal_noise_ratio` and `structural_similarity`. The std is the population
std (ddof=0), as numpy computes it by default.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Iterable

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


@dataclasses.dataclass(frozen=True)
class RestorationRow:
  task: str
  count: int
  psnr_mean: float
  psnr_std: float
  ssim_mean: float
  ssim_std: float
  n_infinite_psnr: int  # identical pairs, PSNR = inf, left out of the PSNR mean


def image_metrics(restored: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
  """(PSNR dB, SSIM) of one [H, W] pair with data_range=1."""
  restored = np.asarray(restored, dtype=np.float64)
  reference = np.asarray(reference, dtype=np.float64)
  if restored.shape != reference.shape or restored.ndim != 2:
    raise ValueError(
      f"expected two [H, W] images of equal shape, got {restored.shape} and {reference.shape}"
    )
  with np.errstate(divide="ignore"):  # identical images: PSNR = inf, counted separately
    psnr = float(peak_signal_noise_ratio(reference, restored, data_range=1.0))
  ssim = float(structural_similarity(reference, restored, data_range=1.0))
  return psnr, ssim


def restoration_table(
  samples: Iterable[tuple[str, np.ndarray, np.ndarray]],
) -> list[RestorationRow]:
  """samples: (task, restored [H, W], reference [H, W]) -> one row per task, sorted by task."""
  per_task = collections.defaultdict(lambda: ([], []))
  for task, restored, reference in samples:
    psnr, ssim = image_metrics(restored, reference)
    per_task[task][0].append(psnr)
    per_task[task][1].append(ssim)
  rows = []
  for task in sorted(per_task):
    psnrs, ssims = (np.asarray(v, dtype=np.float64) for v in per_task[task])
    finite = psnrs[np.isfinite(psnrs)]
    rows.append(
      RestorationRow(
        task,
        len(ssims),
        float(finite.mean()) if finite.size else math.inf,
        float(finite.std()) if finite.size else 0.0,
        float(ssims.mean()),
        float(ssims.std()),
        int((~np.isfinite(psnrs)).sum()),
      )
    )
  return rows
