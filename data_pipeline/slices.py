"""Volumes -> normalised, resized 2-D slices with provenance (the raw material of every example)."""

import dataclasses

import numpy as np
from skimage import transform

from data_pipeline import readers


@dataclasses.dataclass
class RawSlice:
  """One normalised slice before degradation.

  image: float32 [S, S] in [0, 1]. For real paired data (AAPM-Mayo, UDPET) `paired_low` holds
  the acquired low-quality slice [S, S] and `paired` names its task, severity and parameters.
  """

  key: str  # Stable id prefix: source:file:slice.
  image: np.ndarray
  modality: str
  anatomy: str
  patient_id: str
  provenance: dict
  simulated: bool = False
  paired_low: np.ndarray | None = None
  paired: dict | None = None


def normalise_volume(volume, modality, config, path=""):
  """Maps a volume [X, Y, Z] to [0, 1] by modality.

  CT: clip to the HU window `config.ct_window` and scale (a fixed window keeps the noise level
  comparable across scans). MRI: per-volume percentiles `config.mri_percentiles` (MR intensities
  have no absolute unit). PET: divide by the `config.pet_percentile` activity percentile.
  Fundus: already display scaled, clipped to [0, 1].
  """
  volume = readers.check_pixels(np.asarray(volume, np.float32), path)
  if modality == "CT":
    low, high = config.ct_window
  elif modality == "MRI":
    foreground = volume[volume > volume.min()]
    low, high = np.percentile(foreground if foreground.size else volume, config.mri_percentiles)
  elif modality == "PET":
    low, high = (
      0.0,
      np.percentile(volume[volume > 0], config.pet_percentile) if np.any(volume > 0) else 1.0,
    )
  else:
    low, high = 0.0, 1.0
  if not high > low:
    raise readers.BadInput(path, f"degenerate intensity range [{low}, {high}]")
  return np.clip((volume - low) / (high - low), 0.0, 1.0).astype(np.float32)


def resize_square(image, size):
  """[H, W] -> [size, size]: zero-pads the short side (keeps aspect), anti-aliased resize."""
  height, width = image.shape
  side = max(height, width)
  padded = np.zeros((side, side), np.float32)
  top, left = (side - height) // 2, (side - width) // 2
  padded[top : top + height, left : left + width] = image
  resized = transform.resize(
    padded, (size, size), order=1, anti_aliasing=side > size, preserve_range=True
  )
  return np.clip(resized, 0.0, 1.0).astype(np.float32)


def foreground_fraction(image, threshold=0.05):
  """Fraction of pixels above `threshold` (near-empty slices are dropped)."""
  return float(np.mean(image > threshold))


def slice_indices(depth, max_slices, volume=None, min_fraction=0.0):
  """Evenly spaced slice indices over the non-empty range of axis 2 (at most `max_slices`)."""
  candidates = np.arange(depth)
  if volume is not None:
    keep = [k for k in candidates if foreground_fraction(volume[:, :, k]) >= min_fraction]
    candidates = np.array(keep, dtype=int)
  if len(candidates) <= max_slices:
    return [int(k) for k in candidates]
  picks = np.linspace(0, len(candidates) - 1, max_slices).round().astype(int)
  return [int(candidates[i]) for i in picks]


def volume_to_slices(
  volume,
  *,
  key,
  modality,
  anatomy,
  patient_id,
  provenance,
  config,
  orientation="nifti",
  simulated=False,
  skipped=None,
):
  """Normalises a volume [X, Y, Z] and returns its axial RawSlices (near-empty ones dropped).

  `orientation='nifti'` rotates RAS slices so anterior is up; 'dicom' keeps rows/cols.
  Near-empty slices are counted in `skipped` (a list of {'path', 'reason'}) when given.
  """
  path = provenance.get("file", key)
  normalised = normalise_volume(volume, modality, config, path)
  indices = slice_indices(
    normalised.shape[2],
    int(config.max_slices_per_volume),
    normalised,
    float(config.min_foreground_fraction),
  )
  dropped = normalised.shape[2] - len(indices)
  if skipped is not None and not indices:
    skipped.append({"path": path, "reason": "all slices near-empty"})
  result = []
  for k in indices:
    image = normalised[:, :, k]
    if orientation == "nifti":
      image = np.rot90(image)
    image = resize_square(np.ascontiguousarray(image), int(config.image_size))
    if foreground_fraction(image) < float(config.min_foreground_fraction):
      continue
    result.append(
      RawSlice(
        key=f"{key}:{k}",
        image=image,
        modality=modality,
        anatomy=anatomy,
        patient_id=patient_id,
        simulated=simulated,
        provenance=dict(
          provenance,
          slice=int(k),
          axis="axial" if orientation == "nifti" else "frame",
          near_empty_slices_dropped=int(dropped),
        ),
      )
    )
  return result
