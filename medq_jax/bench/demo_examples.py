"""A few data-pipeline-shaped examples built offline, for the worked example and smoke runs.

Images are real scans that ship inside pydicom (``CT_small.dcm`` 128^2, ``MR_small.dcm``
64^2, upsampled to 128^2) with simple numpy degradations: Poisson noise (low-dose CT,
low-count PET), Gaussian-density k-space undersampling, k-space phase ghosting (motion)
and Rician noise. PET is simulated from the MR image and says so (``simulated``). The
real data pipeline (``data_pipeline``) produces richer examples with the same fields.
"""

from __future__ import annotations

import json

import numpy as np
from skimage.transform import resize

SEVERITY_STRENGTH = {"mild": 0.35, "moderate": 0.6, "severe": 1.0}
QUALITY = {"mild": "usable", "moderate": "usable", "severe": "reject"}
TASKS = (("CT", "abdomen", "ldct"), ("MRI", "brain", "mri_undersampling"), ("MRI", "brain", "mri_motion"),
         ("MRI", "brain", "mri_noise"), ("PET", "brain", "pet_lowcount"))
_TERM = {"ldct": "low-dose noise", "mri_undersampling": "undersampling artifacts",
         "mri_motion": "motion artifacts", "mri_noise": "noise", "pet_lowcount": "low-count noise"}
_CAUSE = {"ldct": "reduced tube current", "mri_undersampling": "accelerated k-space sampling",
          "mri_motion": "patient movement during acquisition", "mri_noise": "low signal-to-noise acquisition",
          "pet_lowcount": "a short acquisition with few counts"}


def _scan(name: str) -> np.ndarray:
  try:
    import pydicom
    from pydicom.data import get_testdata_file
    pixels = pydicom.dcmread(get_testdata_file(name)).pixel_array.astype(np.float64)
  except Exception:  # pydicom missing: fall back to a phantom
    from skimage.data import shepp_logan_phantom
    pixels = shepp_logan_phantom()
  low, high = np.percentile(pixels, [0.5, 99.5])
  image = np.clip((pixels - low) / max(high - low, 1e-6), 0.0, 1.0)
  return resize(image, (128, 128), anti_aliasing=True).astype(np.float32)


def degrade(image: np.ndarray, task: str, severity: str, rng: np.random.Generator) -> np.ndarray:
  """Returns a degraded float32 copy of ``image`` [H, W] in [0, 1]."""
  strength = SEVERITY_STRENGTH[severity]
  if task in ("ldct", "pet_lowcount"):
    counts = (400.0 if task == "ldct" else 150.0) / (8.0 * strength ** 2)
    out = rng.poisson(image * counts) / counts
  elif task == "mri_noise":
    sigma = 0.12 * strength
    out = np.hypot(image + rng.normal(0, sigma, image.shape), rng.normal(0, sigma, image.shape))
  else:
    kspace = np.fft.fftshift(np.fft.fft2(image))
    rows = np.arange(image.shape[0]) - image.shape[0] // 2
    if task == "mri_undersampling":
      keep = rng.random(image.shape[0]) < np.exp(-(rows / (image.shape[0] * (0.45 - 0.3 * strength))) ** 2)
      keep |= np.abs(rows) < 4
      kspace = kspace * keep[:, None]
    else:  # motion: random phase errors on a share of phase-encode lines
      hit = rng.random(image.shape[0]) < 0.5 * strength
      kspace = kspace * np.exp(1j * hit * rng.normal(0, 2.0 * strength, image.shape[0]))[:, None]
    out = np.abs(np.fft.ifft2(np.fft.ifftshift(kspace)))
  return np.clip(out, 0.0, 1.0).astype(np.float32)


def description(modality: str, anatomy: str, task: str, severity: str) -> str:
  label = QUALITY[severity]
  impact = {"mild": "slightly reduces the conspicuity of fine details",
            "moderate": "noticeably reduces the visibility of small structures",
            "severe": "obscures anatomical details and prevents reliable interpretation"}[severity]
  return (f"This is a {modality} image of the {anatomy}. The image shows {severity} {_TERM[task]}, "
          f"caused by {_CAUSE[task]}. This {impact}. Overall, the quality of this image is {label}.")


def demo_examples(seed: int = 0, severities=("mild", "moderate", "severe")) -> list[dict]:
  """One example per (task, severity): 15 examples with the data pipeline's fields."""
  rng = np.random.default_rng(seed)
  scans = {"CT": _scan("CT_small.dcm"), "MRI": _scan("MR_small.dcm")}
  scans["PET"] = np.clip(resize(resize(scans["MRI"], (32, 32), anti_aliasing=True), (128, 128)), 0, 1)
  examples = []
  for modality, anatomy, task in TASKS:
    for severity in severities:
      high = scans[modality]
      examples.append({
          "id": f"demo-{task}-{severity}", "split": "test", "patient_id": f"demo-{modality}",
          "low": degrade(high, task, severity, rng), "high": high, "modality": modality,
          "anatomy": anatomy, "task": task, "severity": severity, "quality_label": QUALITY[severity],
          "degradation_params": json.dumps({"strength": SEVERITY_STRENGTH[severity]}),
          "provenance": json.dumps({"source": "pydicom test data", "simulated_modality": modality == "PET"}),
          "simulated": True, "instruction": "", "description": description(modality, anatomy, task, severity)})
  return examples
