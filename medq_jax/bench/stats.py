"""Bootstrap confidence intervals for means of per-item scores (pure numpy)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class MeanCI:
  """Mean of n values with a percentile-bootstrap interval [low, high]."""

  mean: float
  low: float
  high: float
  n: int


def bootstrap_mean_ci(
  values, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> MeanCI:
  """Percentile bootstrap of the mean: resample items with replacement.

  values: [n] numbers (e.g. 0/1 correctness or 0-2 judge scores). Deterministic for a
  given seed. n == 0 gives NaNs; n_resamples == 0 gives the mean with NaN bounds.
  """
  array = np.asarray(values, dtype=np.float64).reshape(-1)
  n = array.size
  if n == 0:
    return MeanCI(float("nan"), float("nan"), float("nan"), 0)
  mean = float(array.mean())
  if n_resamples <= 0:
    return MeanCI(mean, float("nan"), float("nan"), n)
  rng = np.random.default_rng(seed)
  means = np.empty(n_resamples, dtype=np.float64)
  chunk = max(1, 4_000_000 // n)  # bound memory: chunk * n indices at a time
  for start in range(0, n_resamples, chunk):
    stop = min(n_resamples, start + chunk)
    indices = rng.integers(0, n, size=(stop - start, n))
    means[start:stop] = array[indices].mean(axis=1)
  alpha = (1.0 - confidence) / 2.0
  low, high = np.quantile(means, [alpha, 1.0 - alpha])
  return MeanCI(mean, float(low), float(high), n)
