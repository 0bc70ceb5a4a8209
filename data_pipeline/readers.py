"""Reads DICOM, NIfTI and PNG files into arrays, turning every failure into a `BadInput` reason.

Also the one PNG encoder (`encode_png_base64`): bench items and chat requests both use it.
"""

import base64
import io
import os
import warnings

import numpy as np


class BadInput(Exception):
  """An input that is skipped: `path` and a short `reason` go into the manifest."""

  def __init__(self, path, reason):
    super().__init__(f"{path}: {reason}")
    self.path = str(path)
    self.reason = reason


def read_dicom(path):
  """Returns (pixels float32 [frames, rows, cols] in modality units (HU for CT), dataset)."""
  import pydicom  # Imported here: workers that never read DICOM do not pay for it.
  from pydicom.pixels import apply_modality_lut

  if not os.path.isfile(path):
    raise BadInput(path, "unreadable path")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      dataset = pydicom.dcmread(path)
  except Exception as error:  # pydicom raises many types for corrupt files.
    raise BadInput(path, f"corrupt DICOM ({type(error).__name__})") from error
  if "PixelData" not in dataset and "FloatPixelData" not in dataset:
    raise BadInput(path, "DICOM without pixel data")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      pixels = dataset.pixel_array
      shared = _shared_rescale(dataset)
      if shared is not None:  # Enhanced multi-frame: rescale lives in functional groups.
        pixels = pixels.astype(np.float32) * shared[0] + shared[1]
      else:
        pixels = apply_modality_lut(pixels, dataset)
  except Exception as error:
    raise BadInput(
      path, f"undecodable DICOM pixels ({type(error).__name__}: {error})"[:200]
    ) from error
  pixels = np.asarray(pixels, dtype=np.float32)
  if getattr(dataset, "SamplesPerPixel", 1) != 1:
    raise BadInput(path, f"colour DICOM (SamplesPerPixel={dataset.SamplesPerPixel})")
  if pixels.ndim == 2:
    pixels = pixels[None]
  if pixels.ndim != 3:
    raise BadInput(path, f"unexpected dimensions {pixels.shape}")
  return pixels, dataset


def _shared_rescale(dataset):
  """(slope, intercept) from an enhanced DICOM's shared functional groups, else None."""
  if "RescaleSlope" in dataset or "SharedFunctionalGroupsSequence" not in dataset:
    return None
  for group in dataset.SharedFunctionalGroupsSequence:
    for item in group.get("PixelValueTransformationSequence", []):
      return float(item.RescaleSlope), float(item.RescaleIntercept)
  return None


def read_nifti(path):
  """Returns a float32 volume [X, Y, Z] in RAS orientation (axial slices are [:, :, k])."""
  import nibabel as nib

  if not os.path.isfile(path):
    raise BadInput(path, "unreadable path")
  try:
    image = nib.as_closest_canonical(nib.load(path))
    volume = np.asarray(image.dataobj, dtype=np.float32)
  except Exception as error:
    raise BadInput(path, f"corrupt NIfTI ({type(error).__name__})") from error
  while volume.ndim > 3 and volume.shape[-1] == 1:
    volume = volume[..., 0]
  if volume.ndim == 2:
    volume = volume[:, :, None]
  if volume.ndim != 3:
    raise BadInput(path, f"unexpected dimensions {volume.shape} (need 2-D or 3-D)")
  return volume


def read_png(path):
  """Returns a float32 image [H, W] in [0, 1] (colour converted to luminance)."""
  from PIL import Image

  if not os.path.isfile(path):
    raise BadInput(path, "unreadable path")
  try:
    with Image.open(path) as image:
      image.load()
      array = image_levels(image)
  except BadInput:
    raise
  except Exception as error:
    raise BadInput(path, f"corrupt image ({type(error).__name__})") from error
  return to_grey(array, path)


def image_levels(image):
  """A PIL image -> the array of its grey or colour levels, whatever the PNG's storage.

  Palette images ('P', 'PA') are looked up in their palette (their raw values are indices, not
  levels); 'LA' and 'RGBA' drop the alpha channel; '1' becomes 0/255; 16-bit grey ('I;16*')
  stays uint16 and 32-bit integer ('I') is read as 16-bit when its values fit, as a 16-bit PNG
  decoded to 'I' does.
  """
  mode = image.mode
  if mode in ("P", "PA"):
    return np.asarray(image.convert("RGB"))
  if mode == "1":
    return np.asarray(image.convert("L"))
  array = np.asarray(image)
  if mode in ("LA", "La"):
    return array[..., 0]
  if mode in ("RGBA", "RGBa"):
    return array[..., :3]
  if mode == "I":
    if array.min() < 0 or array.max() > 65535:
      raise BadInput(getattr(image, "filename", "image"), "32-bit integer pixels outside 0-65535")
    return array.astype(np.uint16)
  if mode.startswith("I;16"):
    return array.astype(np.uint16)
  if mode == "F":
    raise BadInput(getattr(image, "filename", "image"), "floating-point image mode 'F'")
  return array


def encode_png_base64(image):
  """Float [H, W] in [0, 1] or uint8 [H, W(, 3)] -> base64 PNG text (lossless 8-bit).

  Floats are clipped to [0, 1] and rounded to the nearest of 256 levels.
  """
  from PIL import Image

  array = np.asarray(image)
  if array.dtype != np.uint8:
    array = np.round(np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return base64.b64encode(buffer.getvalue()).decode("ascii")


def to_grey(array, path):
  """[H, W] or [H, W, 3|4] uint8/uint16/float -> float32 [H, W] scaled by the dtype's range."""
  scale = float(np.iinfo(array.dtype).max) if np.issubdtype(array.dtype, np.integer) else 1.0
  array = array.astype(np.float32) / scale
  if array.ndim == 3 and array.shape[-1] in (3, 4):
    array = array[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
  if array.ndim != 2:
    raise BadInput(path, f"unexpected dimensions {array.shape} for a 2-D image")
  return array


def check_pixels(array, path):
  """Raises BadInput for zero-size, tiny, non-finite or constant arrays; returns the array."""
  if array.size == 0 or 0 in array.shape:
    raise BadInput(path, f"zero-size image {array.shape}")
  if min(array.shape[:2]) < 8:
    raise BadInput(path, f"image too small {array.shape} (need >= 8 px per side)")
  if not np.all(np.isfinite(array)):
    raise BadInput(path, "NaN/Inf pixels")
  if float(array.max()) == float(array.min()):
    raise BadInput(path, "constant image")
  return array


def read_any(path):
  """Dispatch by extension: returns (float32 volume [X, Y, Z], kind, dicom dataset or None)."""
  lower = str(path).lower()
  if lower.endswith((".nii", ".nii.gz")):
    return read_nifti(path), "nifti", None
  if lower.endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff")):
    return read_png(path)[:, :, None], "png", None
  if lower.endswith((".dcm", ".ima")) or "." not in os.path.basename(lower):
    pixels, dataset = read_dicom(path)
    return np.transpose(pixels, (1, 2, 0)), "dicom", dataset
  raise BadInput(path, "unknown file type")
