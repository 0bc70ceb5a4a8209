"""A small deterministic `BenchModel` driven by image statistics, for offline runs.

It estimates the noise level (scikit-image's wavelet ``estimate_sigma``) and the
sharpness (variance of the Laplacian) of an image and scores options and writes
descriptions from them. It is a baseline that exercises the full pipeline, not a
quality model; reports name it as "heuristic".
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.restoration import estimate_sigma

from medq_jax.bench.schema import as_gray_float

_NOISY_WORDS = (
  "noise",
  "grain",
  "low-dose",
  "low dose",
  "low-count",
  "reject",
  "severe",
  "poor",
  "no",
)
_CLEAN_WORDS = ("good", "clear", "no obvious", "none", "yes", "free")


def image_statistics(image: np.ndarray) -> tuple[float, float]:
  """(noise sigma, Laplacian variance) of an image scaled to [0, 1]."""
  gray = as_gray_float(image)
  sigma = float(estimate_sigma(gray))
  sharpness = float(ndimage.laplace(gray.astype(np.float64)).var())
  return sigma, sharpness


def _degradation(image: np.ndarray) -> float:
  sigma, _ = image_statistics(image)
  return float(np.clip(sigma / 0.08, 0.0, 1.0))  # 0 clean ... 1 heavily degraded


class HeuristicBenchModel:
  """Scores an option by how well its words match the estimated degradation."""

  name = "heuristic"

  def option_log_likelihoods(self, image, question, options):
    degraded = _degradation(image)
    scores = []
    for option in options:
      text = option.lower()
      noisy = sum(word in text for word in _NOISY_WORDS)
      clean = sum(word in text for word in _CLEAN_WORDS)
      scores.append(noisy * degraded + clean * (1.0 - degraded) - 0.01 * len(text) / 100.0)
    return np.log(np.exp(np.asarray(scores)) / np.exp(np.asarray(scores)).sum())

  def _label(self, degraded: float) -> str:
    return "good" if degraded < 0.25 else ("usable" if degraded < 0.6 else "reject")

  def describe(self, image, prompt):
    degraded = _degradation(image)
    label = self._label(degraded)
    if label == "good":
      body = "The image is clear with sharp edges and no obvious noise or artifacts."
    elif label == "usable":
      body = "Mild noise is visible and slightly reduces the clarity of fine structures."
    else:
      body = "Severe noise obscures fine structures and markedly reduces diagnostic clarity."
    return f"{body} Overall, the quality of this image is {label}."

  def compare(self, image_a, image_b, prompt):
    first, second = _degradation(image_a), _degradation(image_b)
    better, worse = ("first", "second") if first <= second else ("second", "first")
    return (
      f"The {worse} image shows more noise and less distinct structures than the {better} image. "
      f"Overall, the {better} image has higher quality."
    )
