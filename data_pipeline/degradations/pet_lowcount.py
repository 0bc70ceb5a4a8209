"""Low-count PET: Poisson counts at full-dose counts / dose-reduction factor, rescaled."""

import numpy as np

from data_pipeline.degradations import registry


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
  params = {
    "full_dose_counts": float(config.full_dose_counts),
    "dose_reduction": float(dose_reduction),
    "total_counts": int(counts.sum()),
  }
  return np.clip(low, 0.0, 1.0).astype(np.float32), params


def _simulate(image, params, rng, seed):
  """The registry's entry point: `params` is config.pet_lowcount at the example's severity."""
  del seed  # The counts come from `rng`.
  return simulate_low_count(image, params.dose_reduction, rng, params)


DEGRADATION = registry.register(
  registry.Degradation(
    name="pet_lowcount",
    modalities=("PET",),
    simulate=_simulate,
    defaults={
      "full_dose_counts": 2000.0,  # Expected counts at activity 1.0, full dose.
      "dose_reduction": (4.0, 20.0, 100.0),
    },
    per_severity=("dose_reduction",),
    degradation_names=(
      "low-count statistical noise",
      "speckled count noise",
      "Poisson noise from few detected counts",
    ),
    causes=(
      "The injected dose or scan time was reduced, so few coincidence events were "
      "detected per voxel.",
      "With a low tracer dose the Poisson statistics of the detected counts dominate the image.",
    ),
    bench_term="low-count noise",
    order=50,
  )
)
