"""Quality assurance: pHash equals imagehash's, Hamming distances equal a bit count, resized and
JPEG re-encoded copies are caught within new data and against dev/test (zero overlap after),
distinct images kept, unreadable files counted; the TF-IDF description filter against
scikit-learn's cosine similarity."""

import io

import imagehash
import numpy as np
import pytest
from PIL import Image
from skimage import data
from sklearn.feature_extraction import text as sk_text
from sklearn.metrics.pairwise import cosine_similarity

from medq_jax.engine import dedup

NAMES = ("camera", "moon", "coins", "text", "brick", "grass", "gravel", "page", "clock", "cell")


def _base():
  return {name: getattr(data, name)() for name in NAMES}


def _resized(image, factor):
  pil = Image.fromarray(image)
  return np.asarray(pil.resize((int(pil.width * factor), int(pil.height * factor)), Image.BICUBIC))


def _jpeg(image, quality=75):
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
  return np.asarray(Image.open(io.BytesIO(buffer.getvalue())))


def test_phash_equals_imagehash_and_hamming_equals_a_bit_count():
  images = _base()
  for image in images.values():
    assert f"{dedup.phash(image):016x}" == str(imagehash.phash(Image.fromarray(image)))
  float_image = images["camera"].astype(np.float32) / 255
  assert dedup.phash(float_image) == dedup.phash(images["camera"])
  rng = np.random.default_rng(0)
  a = rng.integers(0, 2**63, 50, dtype=np.uint64) * np.uint64(2)
  b = rng.integers(0, 2**63, 40, dtype=np.uint64) + np.uint64(2**63)
  expected = [[bin(int(x) ^ int(y)).count("1") for y in b] for x in a]
  np.testing.assert_array_equal(dedup.hamming(a, b), expected)


def test_resized_and_reencoded_copies_are_caught_distinct_images_kept():
  images = _base()
  new = {name: dedup.phash(img) for name, img in images.items()}
  for name in ("camera", "coins", "cell"):
    new[f"{name}-half"] = dedup.phash(_resized(images[name], 0.5))
    new[f"{name}-double"] = dedup.phash(_resized(images[name], 2.0))
    new[f"{name}-jpeg75"] = dedup.phash(_jpeg(images[name], 75))
    new[f"{name}-jpeg30-small"] = dedup.phash(_jpeg(_resized(images[name], 0.6), 30))
  result = dedup.dedup_images(new, {})
  assert result.kept == list(NAMES)
  assert result.within == {k: k.split("-")[0] for k in new if "-" in k}
  base = np.array([new[n] for n in NAMES], np.uint64)
  distinct = dedup.hamming(base, base)[~np.eye(len(NAMES), dtype=bool)]
  assert distinct.min() > 2 * dedup.MAX_DISTANCE  # a margin, not a coin flip


def test_against_dev_and_test_zero_overlap(tmp_path):
  images = _base()
  dev = {"dev-camera": dedup.phash(images["camera"]), "dev-moon": dedup.phash(images["moon"])}
  test = {"test-coins": dedup.phash(images["coins"])}
  paths = {}
  for name, image in [
    ("n-camera", _resized(images["camera"], 0.7)),
    ("n-coins", _jpeg(images["coins"], 60)),
    ("n-brick", images["brick"]),
    ("n-brick2", _jpeg(images["brick"], 80)),
    ("n-grass", images["grass"]),
  ]:
    suffix = ".jpg" if "2" in name or "coins" in name else ".png"
    path = tmp_path / f"{name}{suffix}"
    Image.fromarray(image).save(path)
    paths[name] = str(path)
  (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
  paths["n-broken"] = str(tmp_path / "broken.png")
  paths["n-missing"] = str(tmp_path / "missing.png")
  hashes, skipped = dedup.hash_files(paths)
  assert set(skipped) == {"n-broken", "n-missing"}
  assert "broken.png" in skipped["n-broken"] and "missing.png" in skipped["n-missing"]
  result = dedup.dedup_images(hashes, {"dev": dev, "test": test})
  assert result.against == {"n-camera": ("dev", "dev-camera"), "n-coins": ("test", "test-coins")}
  assert result.within == {"n-brick2": "n-brick"}
  assert result.kept == ["n-brick", "n-grass"]
  assert result.overlap_before == 2 and result.overlap_after == 0


def test_image_bad_inputs_and_empty_sets():
  with pytest.raises(ValueError, match="NaN"):
    dedup.phash(np.full((16, 16), np.nan))
  with pytest.raises(ValueError, match="expected a non-empty"):
    dedup.phash(np.zeros((0, 4)))
  with pytest.raises(ValueError, match="max_distance"):
    dedup.dedup_images({}, {}, max_distance=64)
  empty = dedup.dedup_images({}, {"dev": {"a": 1}})
  assert empty.kept == [] and empty.overlap_after == 0
  assert dedup.dedup_images({"a": 5}, {"dev": {}}).kept == ["a"]


DESCRIPTIONS = [
  "MRI of the brain with severe motion ghosting that obscures the cortex; quality is reject.",
  "MRI of the brain with severe motion ghosting that obscures the cortex. Quality: reject.",
  "CT of the chest with mild low-dose noise; lung detail is preserved and quality is usable.",
  "Fundus photograph with strong blur from defocus; vessels are unclear; quality is reject.",
  "CT of the chest with mild low-dose noise; lung detail is preserved and quality is usable!",
]


def test_description_filter_against_sklearn_cosine():
  result = dedup.dedup_descriptions(DESCRIPTIONS, threshold=0.9)
  matrix = sk_text.TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit_transform(
    DESCRIPTIONS
  )
  sims = cosine_similarity(matrix)
  kept = []
  for i in range(len(DESCRIPTIONS)):
    if not kept or sims[i, kept].max() < 0.9:
      kept.append(i)
  assert result.kept == kept == [0, 2, 3]
  for i, (j, sim) in result.dropped.items():
    assert sim == pytest.approx(sims[i, j])
  assert set(result.dropped) == {1, 4} and result.dropped[4][0] == 2
  # at 1.0 only word-identical texts go: 4 differs from 2 by punctuation alone
  assert dedup.dedup_descriptions(DESCRIPTIONS, threshold=1.0).kept == [0, 1, 2, 3]


def test_description_edge_cases():
  assert dedup.dedup_descriptions([]).kept == []
  assert dedup.dedup_descriptions(["...", "...", "!"]).kept == [0, 2]
  assert dedup.dedup_descriptions(["same text", "same text", "..."]).kept == [0, 2]
  with pytest.raises(ValueError, match=r"texts\[1\]: expected str"):
    dedup.dedup_descriptions(["a b", 3])
  with pytest.raises(ValueError, match="threshold"):
    dedup.dedup_descriptions(["a"], threshold=0)


def _greedy_reference(n, is_duplicate):
  kept, dropped = [], {}
  for i in range(n):
    match = [k for k in kept if is_duplicate(i, k)]
    if match:
      dropped[i] = match
    else:
      kept.append(i)
  return kept, dropped


def test_image_dedup_equals_a_brute_force_greedy_at_scale():
  rng = np.random.default_rng(7)
  base = rng.integers(0, 2**63, 600, dtype=np.uint64)
  copies = base[rng.integers(0, 600, 300)].copy()
  for k in range(len(copies)):  # flip 0..6 bits: some within max_distance, some not
    for bit in rng.choice(64, rng.integers(0, 7), replace=False):
      copies[k] ^= np.uint64(1) << np.uint64(bit)
  hashes = np.concatenate([base, copies])[rng.permutation(900)]
  new = {f"n{i}": int(h) for i, h in enumerate(hashes)}
  result = dedup.dedup_images(new, {})

  def distance(i, k):
    return bin(int(hashes[i]) ^ int(hashes[k])).count("1")

  kept, dropped = _greedy_reference(900, lambda i, k: distance(i, k) <= dedup.MAX_DISTANCE)
  assert result.kept == [f"n{i}" for i in kept]
  assert set(result.within) == {f"n{i}" for i in dropped}
  for i, matches in dropped.items():
    nearest = min(matches, key=lambda k: (distance(i, k), kept.index(k)))
    assert result.within[f"n{i}"] == f"n{nearest}"


def test_description_dedup_equals_a_brute_force_greedy_across_blocks():
  rng = np.random.default_rng(8)
  words = [f"w{i}" for i in range(400)]
  texts = [" ".join(rng.choice(words, 12)) for _ in range(500)]
  texts += [t + " extra" for t in texts[:150]] + texts[:150]  # near and exact copies past 512
  order = rng.permutation(len(texts))
  texts = [texts[i] for i in order]
  result = dedup.dedup_descriptions(texts, threshold=0.8)
  matrix = sk_text.TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit_transform(texts)
  sims = cosine_similarity(matrix)
  kept, dropped = _greedy_reference(len(texts), lambda i, k: sims[i, k] >= 0.8)
  assert result.kept == kept and set(result.dropped) == set(dropped)
  assert len(dropped) >= 150
  for i, (j, sim) in result.dropped.items():
    assert j == max(dropped[i], key=lambda k: (sims[i, k], -k))
    assert sim == pytest.approx(sims[i, j])
