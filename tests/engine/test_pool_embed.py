"""Embedding a folder into the pool store with our ViT: embeddings equal the model applied by
hand, unreadable files are counted skips with their reason, a killed job resumes without
re-encoding committed shards, and the optional open_clip encoder fails cleanly."""

import shutil

import jax.numpy as jnp
import numpy as np
import pydicom.data
import pytest
from PIL import Image

from configs import model_sizes
from medq_jax.engine import pool_embed
from medq_jax.engine.pool_store import PoolError, PoolStore
from medq_jax.models.vit import SiglipVisionEncoder, image_to_patches


@pytest.fixture(scope="module")
def encoder():
  return pool_embed.VitEncoder.fresh(model_sizes.model_config("tiny").vit, image_size=32, seed=0)


def _png(path, seed, size=40, mode="L"):
  rng = np.random.default_rng(seed)
  levels = rng.integers(0, 256, size=(size, size), dtype=np.uint8)
  if mode == "I;16":
    Image.fromarray(levels.astype(np.uint16) * 257).save(path)
  else:
    Image.fromarray(levels).convert(mode).save(path)
  return levels.astype(np.float32) / 255.0


@pytest.fixture
def folder(tmp_path):
  root = tmp_path / "images"
  (root / "sub").mkdir(parents=True)
  levels = {}
  for i in range(5):
    levels[f"sub/a{i}.png"] = _png(root / "sub" / f"a{i}.png", i)
  levels["b.png"] = _png(root / "b.png", 9, mode="I;16")
  noise = np.random.default_rng(10).integers(0, 256, size=(24, 24), dtype=np.uint8)
  Image.fromarray(noise).save(root / "c.jpg", quality=90)  # JPEG, another size in the batch
  levels["c.jpg"] = np.asarray(Image.open(root / "c.jpg"), np.float32) / 255.0
  (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
  Image.fromarray(np.full((16, 16), 7, np.uint8)).save(root / "flat.png")
  (root / "notes.txt").write_text("not an image")
  return root, levels


def _by_hand(encoder, image):
  """The ViT applied to one image the other way round: JAX patchify, no NumPy layout code."""
  from skimage.transform import resize

  image = resize(image, (32, 32), order=1, anti_aliasing=True, preserve_range=True)
  rgb = jnp.repeat(jnp.asarray(np.clip(image, 0, 1) * 2 - 1, jnp.float32)[None, ..., None], 3, -1)
  patches, ids = image_to_patches(rgb, encoder.config.patch_size, encoder.grid_side)
  hidden = SiglipVisionEncoder(encoder.config).apply({"params": encoder.params}, patches, ids)
  return np.asarray(hidden.mean(axis=1))[0]


def test_folder_embeddings_skips_and_provenance(tmp_path, folder, encoder):
  root, levels = folder
  report = pool_embed.embed_folder(str(root), encoder, str(tmp_path / "pool"), batch_size=4)
  assert report.embedded == 7 and report.already_done == 0
  assert sorted(report.skipped) == [
    ("broken.png", "corrupt image (UnidentifiedImageError)"),
    ("flat.png", "constant image"),
  ]
  store = PoolStore(str(tmp_path / "pool"))
  assert sorted(store.ids) == sorted(levels)
  assert store.dim == 32 and store.encoder == "medq-vit-fresh-seed0:vit32:32px"
  for row, item_id in enumerate(store.ids):
    np.testing.assert_allclose(
      store.read_rows(row, row + 1)[0], _by_hand(encoder, levels[item_id]), atol=2e-5
    )
    assert store.row_info(row)[1] == {"source": "folder", "path": str(root / item_id)}


def test_dicom_gives_its_middle_slice(tmp_path, encoder):
  root = tmp_path / "dicom"
  root.mkdir()
  source = pydicom.data.get_testdata_file("CT_small.dcm")
  shutil.copy(source, root / "ct.dcm")
  report = pool_embed.embed_folder(str(root), encoder, str(tmp_path / "pool"))
  assert report.embedded == 1, report.skipped
  pixels = pydicom.dcmread(source).pixel_array.astype(np.float32)
  pixels = pixels * float(pydicom.dcmread(source).RescaleSlope)
  scaled = (pixels - pixels.min()) / (pixels.max() - pixels.min())
  store = PoolStore(str(tmp_path / "pool"))
  assert store.row_info(0)[1]["kind"] == "dicom"
  np.testing.assert_allclose(store.read_rows(0, 1)[0], _by_hand(encoder, scaled), atol=1e-4)


class _Killed(Exception):
  pass


class _CountingEncoder:
  """Wraps an encoder, counts the images it encodes, and dies after `die_after` batches."""

  def __init__(self, inner, die_after=None):
    self.inner, self.name, self.dim = inner, inner.name, inner.dim
    self.die_after, self.batches, self.images = die_after, 0, 0

  def __call__(self, images):
    if self.die_after is not None and self.batches >= self.die_after:
      raise _Killed()
    self.batches += 1
    self.images += len(images)
    return self.inner(images)


def test_killed_job_resumes_without_recomputing_committed_shards(tmp_path, folder, encoder):
  root, levels = folder
  pool = str(tmp_path / "pool")
  dying = _CountingEncoder(encoder, die_after=2)
  with pytest.raises(_Killed):
    pool_embed.embed_folder(str(root), dying, pool, batch_size=2, shard_rows=3)
  committed = PoolStore(pool).ids
  assert len(committed) == 3  # 4 rows encoded, one shard of 3 committed, 1 row lost
  resumed = _CountingEncoder(encoder)
  report = pool_embed.embed_folder(str(root), resumed, pool, batch_size=2, shard_rows=3)
  assert resumed.images == 4 and report.embedded == 4 and report.already_done == 3
  clean = str(tmp_path / "clean")
  pool_embed.embed_folder(str(root), encoder, clean, batch_size=7)
  store, reference = PoolStore(pool), PoolStore(clean)
  assert sorted(store.ids) == sorted(levels)
  order = [reference.ids.index(item_id) for item_id in store.ids]
  np.testing.assert_allclose(store.read_rows(0, 7), reference.read_rows(0, 7)[order], atol=1e-5)
  again = pool_embed.embed_folder(str(root), resumed, pool)
  assert again.embedded == 0 and again.already_done == 7


def test_process_shards_split_the_folder(tmp_path, folder, encoder):
  root, levels = folder
  pool = str(tmp_path / "pool")
  for index in range(2):
    items = pool_embed.folder_source(str(root), shard_index=index, shard_count=2)
    pool_embed.embed(items, encoder, pool, process_index=index)
  store = PoolStore(pool)
  assert sorted(store.ids) == sorted(levels)
  assert {s.name[:10] for s in store.shards} == {"shard-p000", "shard-p001"}


def test_other_encoder_and_missing_folder(tmp_path, folder, encoder):
  root, _ = folder
  pool = str(tmp_path / "pool")
  pool_embed.embed_folder(str(root), encoder, pool)
  other = pool_embed.VitEncoder(encoder.config, encoder.params, 32, "another-run")
  with pytest.raises(PoolError, match="holds 'medq-vit-fresh-seed0:vit32:32px' embeddings"):
    pool_embed.embed_folder(str(root), other, pool)
  with pytest.raises(ValueError, match="no such image folder"):
    pool_embed.embed_folder(str(tmp_path / "absent"), encoder, pool)
  with pytest.raises(ValueError, match="not a multiple of the ViT patch size"):
    pool_embed.VitEncoder(encoder.config, encoder.params, 30, "x")


def test_open_clip_is_optional(tmp_path):
  try:
    import open_clip  # noqa: F401
  except ImportError:
    with pytest.raises(ImportError, match="pip install open_clip_torch"):
      pool_embed.OpenClipEncoder("ViT-B-16", str(tmp_path / "w.bin"))
    return
  with pytest.raises(FileNotFoundError, match="loads local weights only"):
    pool_embed.OpenClipEncoder("ViT-B-16", str(tmp_path / "w.bin"))


def test_process_shares_do_not_depend_on_what_is_done(tmp_path, folder, encoder):
  """Process 1 resuming after process 0 finished reads exactly its own share again."""
  root, _ = folder
  share = lambda index, done: [
    item.id for item in pool_embed.folder_source(str(root), done, index, 2)
  ]
  assert share(1, ()) == share(1, set(share(0, ()))) == share(1, {"b.png", "sub/a1.png"})
  assert not set(share(0, ())) & set(share(1, ()))
