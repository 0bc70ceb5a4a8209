"""PNG storage modes decode to their grey levels: palette (indices looked up, not read as
levels), LA (alpha dropped), 16-bit and 1-bit, in `data_pipeline.readers.read_png` and in the
bench's base64 decoder. The oracle is the array each PNG was written from."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from data_pipeline import readers
from medq_jax.bench import image_codec

RNG = np.random.default_rng(0)
LEVELS = (255 - 17 * np.arange(16)).astype(np.uint8)  # palette index i -> level 255 - 17 i


def _palette_png(path):
  indices = RNG.integers(0, 16, (32, 40)).astype(np.uint8)
  image = Image.fromarray(indices, mode="P")
  image.putpalette(np.repeat(LEVELS, 3).tolist())
  image.save(path)
  return LEVELS[indices]


def _la_png(path):
  grey = RNG.integers(0, 256, (32, 40)).astype(np.uint8)
  alpha = RNG.integers(0, 256, (32, 40)).astype(np.uint8)
  Image.fromarray(np.stack([grey, alpha], -1), mode="LA").save(path)
  return grey


def _b64(path):
  return base64.b64encode(path.read_bytes()).decode("ascii")


def test_palette_png_reads_levels_not_indices(tmp_path):
  levels = _palette_png(tmp_path / "p.png")
  with Image.open(tmp_path / "p.png") as image:
    assert image.mode == "P"
  np.testing.assert_allclose(readers.read_png(tmp_path / "p.png"), levels / 255.0, atol=1e-6)
  decoded = image_codec.decode_image(_b64(tmp_path / "p.png"))
  assert np.array_equal(decoded[..., 0] if decoded.ndim == 3 else decoded, levels)


def test_la_png_drops_alpha(tmp_path):
  grey = _la_png(tmp_path / "la.png")
  np.testing.assert_allclose(readers.read_png(tmp_path / "la.png"), grey / 255.0, atol=1e-7)
  assert np.array_equal(image_codec.decode_image(_b64(tmp_path / "la.png")), grey)


def test_16_bit_png_keeps_its_range(tmp_path):
  values = RNG.integers(0, 65536, (32, 40)).astype(np.uint16)
  Image.fromarray(values).save(tmp_path / "h.png")
  with Image.open(tmp_path / "h.png") as image:
    assert image.mode.startswith("I;16")
  np.testing.assert_allclose(readers.read_png(tmp_path / "h.png"), values / 65535.0, atol=1e-6)
  expected = np.round(values / 257.0).astype(np.uint8)
  assert np.array_equal(image_codec.decode_image(_b64(tmp_path / "h.png")), expected)


def test_32_bit_integer_mode_and_one_bit():
  values = RNG.integers(0, 65536, (8, 8)).astype(np.int32)
  assert np.array_equal(readers.image_levels(Image.fromarray(values, mode="I")), values)
  with pytest.raises(readers.BadInput, match="outside 0-65535"):
    readers.image_levels(Image.fromarray(values - 70000, mode="I"))
  bits = RNG.integers(0, 2, (8, 8)).astype(bool)
  assert np.array_equal(readers.image_levels(Image.fromarray(bits)), bits.astype(np.uint8) * 255)


def test_rgba_and_plain_grey_unchanged(tmp_path):
  rgb = RNG.integers(0, 256, (16, 16, 3)).astype(np.uint8)
  rgba = np.concatenate([rgb, np.full((16, 16, 1), 9, np.uint8)], -1)
  Image.fromarray(rgba, mode="RGBA").save(tmp_path / "c.png")
  luminance = rgb.astype(np.float32) / 255.0 @ np.array([0.299, 0.587, 0.114], np.float32)
  np.testing.assert_allclose(readers.read_png(tmp_path / "c.png"), luminance, atol=1e-6)
  buffer = io.BytesIO()
  Image.fromarray(rgb[..., 0]).save(buffer, format="PNG")
  grey = image_codec.decode_image(base64.b64encode(buffer.getvalue()).decode())
  assert np.array_equal(grey, rgb[..., 0])
