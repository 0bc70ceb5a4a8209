"""Restoration metrics: checked PSNR and SSIM of [H, W] images, and mean +- std per group.

One SSIM for training and evaluation: scikit-image's `structural_similarity` with an 11x11
Gaussian window (sigma 1.5, truncate 3.5, population covariance, K1=0.01, K2=0.03), the
definition `medq_jax.metrics.ssim` (the training loss) implements in JAX. The data range is
explicit; an image outside [0, data_range], non-finite or of the wrong shape is a ValueError
naming the case and the field, never a silently meaningless number. The std is the
population std (ddof=0).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Iterable

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

SSIM_SIGMA = 1.5
SSIM_WINDOW = 11  # 2 * int(3.5 * sigma + 0.5) + 1: scikit-image's Gaussian window at sigma 1.5.
RANGE_TOLERANCE = 1e-5  # Relative to data_range: float round-off allowed outside [0, range].
SSIM_DEFINITION = (
  "scikit-image structural_similarity(gaussian_weights=True, sigma=1.5, "
  "use_sample_covariance=False, data_range=R): 11x11 Gaussian window (truncate 3.5), "
  "K1=0.01, K2=0.03, mean over the valid region; identical to medq_jax.metrics.ssim "
  "(the training loss)"
)


@dataclasses.dataclass(frozen=True)
class RestorationRow:
  task: str
  count: int
  psnr_mean: float
  psnr_std: float
  ssim_mean: float
  ssim_std: float
  n_infinite_psnr: int  # identical pairs, PSNR = inf, left out of the PSNR mean


@dataclasses.dataclass(frozen=True)
class Stat:
  """mean +- population std of n values; infinite values (identical images) are counted in
  n_infinite and left out of mean and std. mean/std are NaN when no finite value is left."""

  n: int
  mean: float
  std: float
  n_infinite: int = 0


def summarize(values: Iterable[float]) -> Stat:
  values = np.asarray(list(values), dtype=np.float64)
  finite = values[np.isfinite(values)]
  if not finite.size:
    return Stat(int(values.size), math.nan, math.nan, int(values.size))
  return Stat(
    int(values.size), float(finite.mean()), float(finite.std()), int(values.size - finite.size)
  )


def check_image(
  image,
  *,
  case_id: str,
  field: str,
  data_range: float = 1.0,
  shape: tuple[int, ...] | None = None,
) -> np.ndarray:
  """The image as float64 [H, W] clipped to [0, data_range] after checking it.

  ValueError naming `case_id` and `field` if it is not 2-D (or not of `shape`), holds NaN or
  Inf, or has values beyond [0, data_range] by more than RANGE_TOLERANCE * data_range.
  """
  where = f"case {case_id} field {field!r}"
  if not (isinstance(data_range, (int, float)) and data_range > 0):
    raise ValueError(f"{where}: data_range must be a positive number, got {data_range!r}")
  try:
    array = np.asarray(image, dtype=np.float64)
  except (TypeError, ValueError) as error:
    raise ValueError(
      f"{where}: expected a float [H, W] array, got {type(image).__name__}"
    ) from error
  if array.ndim != 2:
    raise ValueError(f"{where}: expected a [H, W] image, got shape {array.shape}")
  if shape is not None and array.shape != tuple(shape):
    raise ValueError(f"{where}: shape {array.shape}, expected {tuple(shape)} (the reference's)")
  if min(array.shape) < SSIM_WINDOW:
    raise ValueError(
      f"{where}: shape {array.shape} is smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} SSIM window"
    )
  bad = ~np.isfinite(array)
  if bad.any():
    raise ValueError(
      f"{where}: {int(bad.sum())} NaN/Inf values, expected finite [0, {data_range:g}]"
    )
  low, high = float(array.min()), float(array.max())
  tolerance = RANGE_TOLERANCE * data_range
  if low < -tolerance or high > data_range + tolerance:
    raise ValueError(f"{where}: values in [{low:.3g}, {high:.3g}], expected [0, {data_range:g}]")
  return np.clip(array, 0.0, data_range)


def psnr(image: np.ndarray, reference: np.ndarray, data_range: float = 1.0) -> float:
  """PSNR in dB of checked float arrays; inf for identical images."""
  with np.errstate(divide="ignore"):
    return float(peak_signal_noise_ratio(reference, image, data_range=data_range))


def ssim(image: np.ndarray, reference: np.ndarray, data_range: float = 1.0) -> float:
  """SSIM of checked float arrays with the project's one definition (SSIM_DEFINITION)."""
  return float(
    structural_similarity(
      reference,
      image,
      data_range=data_range,
      gaussian_weights=True,
      sigma=SSIM_SIGMA,
      use_sample_covariance=False,
    )
  )


def image_metrics(
  restored, reference, *, data_range: float = 1.0, case_id: str = "?", field: str = "restored"
) -> tuple[float, float]:
  """(PSNR dB, SSIM) of one [H, W] pair, both checked against [0, data_range]."""
  reference = check_image(reference, case_id=case_id, field="reference", data_range=data_range)
  restored = check_image(
    restored, case_id=case_id, field=field, data_range=data_range, shape=reference.shape
  )
  return psnr(restored, reference, data_range), ssim(restored, reference, data_range)


def restoration_table(
  samples: Iterable[tuple[str, np.ndarray, np.ndarray]], data_range: float = 1.0
) -> list[RestorationRow]:
  """samples: (task, restored [H, W], reference [H, W]) -> one row per task, sorted by task.

  Errors name the sample by its position: case '#<i> (<task>)'.
  """
  per_task = collections.defaultdict(lambda: ([], []))
  for position, (task, restored, reference) in enumerate(samples):
    value_psnr, value_ssim = image_metrics(
      restored, reference, data_range=data_range, case_id=f"#{position} ({task})"
    )
    per_task[task][0].append(value_psnr)
    per_task[task][1].append(value_ssim)
  rows = []
  for task in sorted(per_task):
    psnrs, ssims = summarize(per_task[task][0]), summarize(per_task[task][1])
    rows.append(
      RestorationRow(
        task,
        ssims.n,
        psnrs.mean if psnrs.n_infinite < psnrs.n else math.inf,
        psnrs.std if psnrs.n_infinite < psnrs.n else 0.0,
        ssims.mean,
        ssims.std,
        psnrs.n_infinite,
      )
    )
  return rows
