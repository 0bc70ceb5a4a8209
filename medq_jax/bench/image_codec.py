"""Base64 image fields of VLMEvalKit TSV files: check and decode (encode: `encode_png_base64`).

VLMEvalKit stores every image as base64 of an encoded file (PNG/JPEG). A value of
64 characters or fewer is not an image but the ``index`` of another row that holds
it (VLMEvalKit's de-duplication); resolving that is the reader's job. The encoder is the
project's one PNG encoder, `data_pipeline.readers.encode_png_base64`, re-exported here.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image

from data_pipeline.readers import BadInput, encode_png_base64, image_levels

__all__ = [
  "decode_bytes",
  "decode_image",
  "encode_png_base64",
  "is_row_reference",
  "pil_to_uint8",
]

REFERENCE_MAX_CHARS = 64  # VLMEvalKit: image values this short point to another row
_SIGNATURES = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")


def is_row_reference(value: str) -> bool:
  """True when an ``image`` value is another row's index rather than base64 data."""
  return len(value.strip()) <= REFERENCE_MAX_CHARS


def decode_bytes(value: str) -> bytes:
  """Base64 text -> encoded image bytes; raises ValueError with the reason."""
  text = "".join(value.split())
  try:
    data = base64.b64decode(text, validate=True)
  except (binascii.Error, ValueError) as error:
    raise ValueError(f"not valid base64 ({error})") from None
  if not data.startswith(_SIGNATURES):
    raise ValueError(
      f"base64 decodes to {len(data)} bytes that are not a PNG/JPEG/GIF/BMP/TIFF/WEBP image"
    )
  return data


def pil_to_uint8(image: Image.Image) -> np.ndarray:
  """A PIL image -> uint8 [H, W] or [H, W, 3] of its levels (`readers.image_levels`: palette
  looked up, alpha dropped); 16-bit levels rounded to 8 bits (x / 257)."""
  try:
    levels = image_levels(image)
  except BadInput as error:
    raise ValueError(error.reason) from None
  if levels.dtype == np.uint16:
    levels = np.round(levels.astype(np.float64) / 257.0).astype(np.uint8)
  if levels.dtype != np.uint8:
    raise ValueError(f"unsupported image mode {image.mode!r}")
  return levels


def decode_image(value: str) -> np.ndarray:
  """Base64 text -> uint8 array [H, W] (grayscale) or [H, W, 3] (colour)."""
  data = decode_bytes(value)
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      return pil_to_uint8(image)
  except (OSError, SyntaxError) as error:
    raise ValueError(f"image bytes could not be decoded ({error})") from None
