"""Simulated FDG-like PET activity maps from brain MRI tissue classes (no real PET ships on PyPI).

Tissue classes come from a 4-class multi-Otsu threshold of the MRI volume (background, CSF,
grey matter, white matter by T1 intensity); each class gets a typical relative FDG uptake
(grey matter ~4x white matter), then a Gaussian point-spread function of `fwhm_mm` blurs it.
Every slice made here is marked `simulated: true`.
"""

import numpy as np
from scipy import ndimage
from skimage import filters

# Relative uptake per class (T1 intensity order: background, CSF, grey matter, white matter).
UPTAKE = (0.0, 0.15, 1.0, 0.3)


def simulate_pet_volume(mri_volume, voxel_mm=(1.0, 1.0, 1.0), fwhm_mm=5.0):
  """mri_volume: float [X, Y, Z] in [0, 1] -> activity [X, Y, Z] (arbitrary units, max ~1).

  Returns (activity, info) where info records thresholds, uptake and PSF for provenance.
  """
  volume = np.asarray(mri_volume, np.float32)
  thresholds = filters.threshold_multiotsu(volume, classes=4)
  classes = np.digitize(volume, bins=thresholds)
  activity = np.asarray(UPTAKE, np.float32)[classes]
  sigma_vox = [fwhm_mm / (2.3548 * float(v)) for v in voxel_mm]
  activity = ndimage.gaussian_filter(activity, sigma=sigma_vox)
  info = {
    "method": "multi-otsu tissue classes -> FDG-like uptake -> Gaussian PSF",
    "thresholds": [float(t) for t in thresholds],
    "uptake_bg_csf_gm_wm": list(UPTAKE),
    "psf_fwhm_mm": fwhm_mm,
  }
  return activity.astype(np.float32), info
