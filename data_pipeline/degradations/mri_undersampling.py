"""MRI undersampling: a 1-D Gaussian-density random line mask on k-space, zero-filled recon."""

import numpy as np

from data_pipeline.degradations import registry


def line_mask(num_lines, acceleration, center_fraction, density_std, rng):
  """bool [num_lines]: exactly round(num_lines / acceleration) phase-encode lines sampled.

  The central round(num_lines * center_fraction) lines are always sampled; the rest are drawn
  without replacement with probability ∝ exp(-d^2 / (2 (density_std * num_lines)^2)), d the
  distance from the k-space centre (index num_lines // 2 after fftshift).
  """
  total = int(round(num_lines / acceleration))
  num_center = int(round(num_lines * center_fraction))
  center = num_lines // 2
  mask = np.zeros(num_lines, bool)
  start = center - num_center // 2
  mask[start : start + num_center] = True
  remaining = total - int(mask.sum())
  if remaining > 0:
    candidates = np.flatnonzero(~mask)
    distance = candidates - center
    weight = np.exp(-(distance.astype(np.float64) ** 2) / (2 * (density_std * num_lines) ** 2))
    picks = rng.choice(candidates, size=remaining, replace=False, p=weight / weight.sum())
    mask[picks] = True
  return mask


def undersample(image, acceleration, center_fraction, rng, config):
  """image: float32 [S, S] -> (zero-filled magnitude float32 [S, S] in [0, 1], params).

  Lines are phase-encode columns (axis 1) of the centred k-space.
  """
  kspace = np.fft.fftshift(np.fft.fft2(image.astype(np.float64)))
  mask = line_mask(image.shape[1], acceleration, center_fraction, config.density_std, rng)
  recon = np.abs(np.fft.ifft2(np.fft.ifftshift(kspace * mask[None, :])))
  params = {
    "acceleration": float(acceleration),
    "center_fraction": float(center_fraction),
    "density_std": float(config.density_std),
    "mask_axis": 1,
    "sampled_lines": np.flatnonzero(mask).tolist(),
    "effective_acceleration": float(image.shape[1] / mask.sum()),
  }
  return np.clip(recon, 0.0, 1.0).astype(np.float32), params


def _simulate(image, params, rng, seed):
  """The registry's entry point: `params` is config.mri_undersampling at one severity."""
  del seed  # The mask comes from `rng`.
  return undersample(image, params.acceleration, params.center_fraction, rng, params)


def _check(params):
  """The always-sampled centre must be smaller than the sampled fraction 1 / acceleration."""
  if params.center_fraction >= 1.0 / params.acceleration:
    raise registry.ParamError(
      "center_fraction",
      "the centre must be smaller than the sampled fraction "
      f"1/acceleration, got {params.center_fraction} >= 1/{params.acceleration}",
    )


DEGRADATION = registry.register(
  registry.Degradation(
    name="mri_undersampling",
    modalities=("MRI",),
    simulate=_simulate,
    defaults={
      "acceleration": (4.0, 4.0, 4.0),
      "center_fraction": (0.16, 0.08, 0.04),
      "density_std": 0.25,  # Gaussian std as a fraction of the k-space width.
    },
    per_severity=("acceleration", "center_fraction"),
    check=_check,
    degradation_names=(
      "aliasing and blurring from k-space undersampling",
      "undersampling artifacts (ringing, loss of sharp edges)",
      "coherent aliasing from incomplete k-space",
    ),
    causes=(
      "Phase-encode lines were skipped to shorten the scan and the missing k-space was "
      "zero-filled.",
      "An accelerated acquisition sampled only part of k-space, and a direct inverse "
      "Fourier transform was applied.",
    ),
    bench_term="undersampling artifacts",
    order=20,
  )
)
