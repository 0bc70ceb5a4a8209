"""Quality assurance (MedQ-Engine §2.4): perceptual-hash deduplication and a TF-IDF near-duplicate
filter on descriptions.

Images: imagehash's pHash (64 bits: the sign of the low 8 x 8 DCT coefficients of a 32 x 32
grey thumbnail, so resizing and JPEG re-encoding barely move it). Two images are duplicates when
their hashes differ in at most `max_distance` bits (default 4 of 64: the tests' resized and
JPEG-75 copies land at 0-2 bits; distinct images of the built-in data sit far above). New images
are deduplicated greedily in the given order (the first of a group is kept) and every new image
within `max_distance` of a dev or test image is dropped; the report counts both and checks,
after filtering, that no kept image matches dev or test (`overlap_after` is 0, or it raises).

Descriptions: TF-IDF (word 1-2-grams, sublinear tf) cosine similarity; a description whose
similarity to an earlier kept one is >= `threshold` (default 0.9) is dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import imagehash
import numpy as np
from PIL import Image
from sklearn.feature_extraction import text as sk_text

from data_pipeline import readers

MAX_DISTANCE = 4
TEXT_THRESHOLD = 0.9
_CHUNK = 4096
_TEXT_BLOCK = 512


def phash(image) -> int:
  """Float [H, W] in [0, 1], uint8/uint16 [H, W(, 3)] or a PIL image -> the 64-bit pHash."""
  if not isinstance(image, Image.Image):
    array = np.asarray(image)
    if array.ndim == 3:
      array = readers.to_grey(array, "image")
    if array.ndim != 2 or array.size == 0:
      raise ValueError(f"image: expected a non-empty [H, W] or [H, W, 3] array, got {array.shape}")
    if np.issubdtype(array.dtype, np.integer):
      array = array.astype(np.float64) / np.iinfo(array.dtype).max
    if not np.isfinite(array).all():
      raise ValueError("image: NaN or inf pixels")
    image = Image.fromarray(np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8))
  bits = imagehash.phash(image).hash.flatten()
  return int(np.packbits(bits).view(">u8")[0])


def hash_files(paths: Mapping[str, str]) -> tuple[dict[str, int], dict[str, str]]:
  """{id: image path} -> ({id: pHash}, {id: why it was skipped}): unreadable files are counted."""
  hashes, skipped = {}, {}
  for item_id, path in paths.items():
    try:
      hashes[item_id] = phash(readers.read_png(path))
    except (readers.BadInput, ValueError, OSError) as error:
      skipped[item_id] = f"{path}: {error}"
  return hashes, skipped


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """[N] x [M] uint64 hashes -> [N, M] differing bits."""
  return np.bitwise_count(a[:, None] ^ b[None, :]).astype(np.int64)


def _as_array(hashes: Mapping[str, int]) -> tuple[list[str], np.ndarray]:
  ids = list(hashes)
  return ids, np.array([hashes[i] for i in ids], np.uint64).reshape(-1)


@dataclasses.dataclass(frozen=True)
class ImageDedup:
  """`kept` new ids in order; `within` {dropped id: kept id it copies}; `against` {dropped id:
  (reference set, its id)}; `overlap_before` / `overlap_after`: new ids matching dev or test
  before and after filtering (after is always 0)."""

  kept: list[str]
  within: dict[str, str]
  against: dict[str, tuple[str, str]]
  overlap_before: int
  overlap_after: int


def _nearest(query: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per query hash: the smallest Hamming distance to `ref` and its index (chunked)."""
  best = np.full(len(query), 65, np.int64)
  where = np.zeros(len(query), np.int64)
  for start in range(0, len(ref), _CHUNK):
    d = hamming(query, ref[start : start + _CHUNK])
    if d.size:
      j = d.argmin(axis=1)
      smaller = d[np.arange(len(query)), j] < best
      best[smaller] = d[np.arange(len(query)), j][smaller]
      where[smaller] = j[smaller] + start
  return best, where


def dedup_images(
  new: Mapping[str, int],
  references: Mapping[str, Mapping[str, int]],
  max_distance: int = MAX_DISTANCE,
) -> ImageDedup:
  """Deduplicates `new` {id: pHash} within itself and against `references` ({"dev": {...},
  "test": {...}}); see the module docstring."""
  if not 0 <= max_distance < 64:
    raise ValueError(f"max_distance: expected 0..63 bits, got {max_distance}")
  ids, hashes = _as_array(new)
  against: dict[str, tuple[str, str]] = {}
  clean = np.ones(len(ids), bool)
  for name, reference in references.items():
    ref_ids, ref_hashes = _as_array(reference)
    if not len(ref_ids) or not len(ids):
      continue
    distance, index = _nearest(hashes, ref_hashes)
    for i in np.flatnonzero((distance <= max_distance) & clean):
      against[ids[i]] = (name, ref_ids[index[i]])
    clean &= distance > max_distance
  overlap_before = len(against)
  kept_index: list[int] = []
  kept_hashes = np.zeros(len(ids), np.uint64)  # the kept hashes so far, in order
  within: dict[str, str] = {}
  for i in np.flatnonzero(clean):
    if kept_index:
      distance = np.bitwise_count(kept_hashes[: len(kept_index)] ^ hashes[i])
      j = int(distance.argmin())  # the nearest kept image (ties: the first)
      if distance[j] <= max_distance:
        within[ids[i]] = ids[kept_index[j]]
        continue
    kept_hashes[len(kept_index)] = hashes[i]
    kept_index.append(int(i))
  kept = [ids[i] for i in kept_index]
  overlap_after = 0
  for reference in references.values():
    _, ref_hashes = _as_array(reference)
    if len(ref_hashes) and kept_index:
      overlap_after += int((_nearest(hashes[kept_index], ref_hashes)[0] <= max_distance).sum())
  if overlap_after:
    raise AssertionError(f"{overlap_after} kept images still match dev/test")  # never expected
  return ImageDedup(kept, within, against, overlap_before, overlap_after)


@dataclasses.dataclass(frozen=True)
class TextDedup:
  """`kept` indices in order; `dropped` {index: (earlier kept index, cosine similarity)}."""

  kept: list[int]
  dropped: dict[int, tuple[int, float]]


def dedup_descriptions(texts: Sequence[str], threshold: float = TEXT_THRESHOLD) -> TextDedup:
  """Drops each description whose TF-IDF cosine to an earlier kept one is >= threshold."""
  if not 0.0 < threshold <= 1.0:
    raise ValueError(f"threshold: expected a cosine similarity in (0, 1], got {threshold}")
  for i, text in enumerate(texts):
    if not isinstance(text, str):
      raise ValueError(f"texts[{i}]: expected str, got {type(text).__name__}")
  if not texts:
    return TextDedup([], {})
  try:
    matrix = sk_text.TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit_transform(texts)
  except ValueError:  # no text has a word: nothing to compare, keep the first of equal texts
    matrix = None
  has_words = np.diff(matrix.indptr) > 0 if matrix is not None else np.zeros(len(texts), bool)
  kept: list[int] = []
  is_kept = np.zeros(len(texts), bool)
  dropped: dict[int, tuple[int, float]] = {}
  for start in range(0, len(texts), _TEXT_BLOCK):
    stop = min(start + _TEXT_BLOCK, len(texts))
    # cosine of this block's rows to every earlier row (TF-IDF rows are L2-normalised)
    sims = (matrix[start:stop] @ matrix[:stop].T).toarray() if matrix is not None else None
    for i in range(start, stop):
      if has_words[i]:
        earlier = np.where(is_kept[:i], sims[i - start, :i], -1.0)
        j = int(earlier.argmax()) if i else 0
        if i and earlier[j] >= threshold - 1e-9:
          dropped[i] = (j, float(earlier[j]))
          continue
      else:  # no word: compared literally
        same = [k for k in kept if texts[k].strip() == texts[i].strip()]
        if same:
          dropped[i] = (same[0], 1.0)
          continue
      kept.append(i)
      is_kept[i] = True
  return TextDedup(kept, dropped)
