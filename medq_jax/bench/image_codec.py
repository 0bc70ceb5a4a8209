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

from data_pipeline.readers import encode_png_base64

__all__ = ["decode_bytes", "decode_image", "encode_png_base64", "is_row_reference"]

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


def decode_image(value: str) -> np.ndarray:
  """Base64 text -> uint8 array [H, W] (grayscale) or [H, W, 3] (colour)."""
  data = decode_bytes(value)
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
      return np.asarray(image)
  except (OSError, SyntaxError) as error:
    raise ValueError(f"image bytes could not be decoded ({error})") from None
