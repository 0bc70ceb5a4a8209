"""Low-count PET: Poisson counts at full-dose counts / dose-reduction factor, rescaled."""

import numpy as np


def expected_counts(image, full_dose_counts, dose_reduction):
  """Mean counts per pixel [S, S] at the reduced dose: image * full_dose_counts / dose_reduction."""
  return image.astype(np.float64) * (float(full_dose_counts) / float(dose_reduction))


def simulate_low_count(image, dose_reduction, rng, config):
  """image: activity float32 [S, S] in [0, 1] -> (low-count float32 [S, S] in [0, 1], params).

  counts ~ Poisson(expected_counts); the image is counts rescaled to full-dose units.
  """
  mean = expected_counts(image, config.full_dose_counts, dose_reduction)
  counts = rng.poisson(mean)
  low = counts * (float(dose_reduction) / float(config.full_dose_counts))
  params = {"full_dose_counts": float(config.full_dose_counts),
            "dose_reduction": float(dose_reduction),
            "total_counts": int(counts.sum())}
  return np.clip(low, 0.0, 1.0).astype(np.float32), params
