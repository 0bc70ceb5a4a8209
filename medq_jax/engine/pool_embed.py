"""Embeds the image pool into the pool store: a folder of images or a precomputed dataset split,
through a Grain pipeline sharded by JAX process, with a pluggable encoder.

Encoders map B grey images float32 [H, W] in [0, 1] (any sizes) to embeddings [B, dim]; their
`name` is
stored with every shard, so a pool never mixes embedding spaces:
  * `VitEncoder` (default): our SigLIP ViT (medq_jax/models/vit.py), params from a medq-train
    run or freshly initialised (tests); the embedding is the mean of the last hidden states.
  * `OpenClipEncoder`: open_clip / BiomedCLIP from local weights only (optional import).
Sources (each item has a stable id; items already in the pool are skipped before reading, so a
killed job resumes without recomputing its committed shards):
  * `folder_source`: PNG/JPEG/TIFF/BMP read as grey levels in [0, 1]; DICOM and NIfTI files
    give their middle slice, min-max scaled to [0, 1]. Ids are paths relative to the folder.
  * `dataset_source`: a split of the precomputed ArrayRecord dataset through the one loader
    (`data_pipeline.loader.make_loader`, sharded by JAX process), one image field per example.
An unreadable image is skipped with its reason logged and counted in the returned report.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import warnings
from collections.abc import Collection, Iterator, Sequence
from typing import Protocol

import grain
import jax
import jax.numpy as jnp
import numpy as np

from data_pipeline import readers
from medq_jax.engine.pool_store import PoolWriter
from medq_jax.layout import image_to_vit_patches, to_rgb
from medq_jax.models.vit import SiglipVisionEncoder

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
VOLUME_EXTENSIONS = (".dcm", ".ima", ".nii", ".nii.gz")


class Encoder(Protocol):
  name: str  # identifies the embedding space (stored in every shard)
  dim: int

  def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
    """B grey images float32 [H, W] in [0, 1] (sizes may differ) -> float32 [B, dim]."""


class VitEncoder:
  """Our ViT: each image resized to `image_size`, grey -> RGB in [-1, 1], patchified as the
  model's layout does (`medq_jax.layout`), encoded, and mean-pooled over its patches. Calls are
  padded to a multiple of `batch` images (one compiled shape for every call of up to `batch`)."""

  batch = 16

  def __init__(self, vit_config, params, image_size: int, name: str):
    if image_size % vit_config.patch_size:
      raise ValueError(
        f"image_size: {image_size} is not a multiple of the ViT patch size {vit_config.patch_size}"
      )
    self.config, self.params, self.image_size = vit_config, params, int(image_size)
    self.dim = int(vit_config.hidden_size)
    self.name = f"{name}:vit{self.dim}:{self.image_size}px"
    self.grid_side = vit_config.image_size // vit_config.patch_size
    module = SiglipVisionEncoder(vit_config)
    self._encode = jax.jit(
      lambda params, patches, ids: jnp.mean(module.apply({"params": params}, patches, ids), 1)
    )

  @classmethod
  def fresh(cls, vit_config, image_size: int, seed: int = 0) -> VitEncoder:
    """Randomly initialised params (tests, smoke runs): a named, reproducible embedding space."""
    patch = vit_config.patch_size
    tokens = (image_size // patch) ** 2
    patches = jnp.zeros((1, tokens, vit_config.num_channels * patch * patch), jnp.float32)
    ids = jnp.zeros((1, tokens), jnp.int32)
    params = SiglipVisionEncoder(vit_config).init(jax.random.key(seed), patches, ids)["params"]
    return cls(vit_config, params, image_size, f"medq-vit-fresh-seed{seed}")

  @classmethod
  def from_run(cls, config, workdir: str) -> VitEncoder:
    """The ViT of a medq-train run (or a converted directory), as inference loads it."""
    from medq_jax.infer import loading  # pylint: disable=g-import-not-at-top  # heavy, optional

    loaded = loading.load_for_inference(config, workdir)
    name = f"medq-vit:{os.path.abspath(loaded.source)}@step{loaded.step}"
    return cls(config.model.vit, loaded.params["vit"], config.layout.vit_image_size, name)

  def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
    rows = [
      image_to_vit_patches(to_rgb(image, self.image_size, "image", "pool"), *self._patch_args)
      for image in images
    ]
    patches = np.stack([patch for patch, _ in rows])
    ids = np.stack([position for _, position in rows])
    padded = -(-len(rows) // self.batch) * self.batch  # one compiled shape per multiple
    patches = np.pad(patches, ((0, padded - len(rows)), (0, 0), (0, 0)))
    ids = np.pad(ids, ((0, padded - len(rows)), (0, 0)))
    return np.asarray(self._encode(self.params, patches, ids), np.float32)[: len(rows)]

  @property
  def _patch_args(self):
    return self.config.patch_size, self.grid_side


class OpenClipEncoder:
  """open_clip's image tower (BiomedCLIP among others) from a local weights file only."""

  def __init__(self, model_name: str, weights: str, device: str = "cpu"):
    try:
      import open_clip  # pylint: disable=g-import-not-at-top
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError(
        "OpenClipEncoder needs open_clip (pip install open_clip_torch); the default encoder "
        "is our ViT (VitEncoder)"
      ) from None
    if not os.path.isfile(weights):
      raise FileNotFoundError(
        f"{weights}: no such weights file (open_clip loads local weights only)"
      )
    self._torch = torch
    self.model, _, self.preprocess = open_clip.create_model_and_transforms(
      model_name, pretrained=weights, device=device
    )
    self.model.eval()
    self.device = device
    self.dim = int(self.model.visual.output_dim)
    self.name = f"open_clip:{model_name}:{os.path.basename(weights)}"

  def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
    from PIL import Image  # pylint: disable=g-import-not-at-top

    batch = self._torch.stack(
      [
        self.preprocess(Image.fromarray(np.uint8(np.clip(image, 0, 1) * 255)).convert("RGB"))
        for image in images
      ]
    ).to(self.device)
    with self._torch.no_grad():
      return self.model.encode_image(batch).float().cpu().numpy()


@dataclasses.dataclass
class EmbedReport:
  """What a call to `embed` did: rows embedded, items already in the pool, unreadable ones."""

  embedded: int = 0
  already_done: int = 0
  skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (id, reason)
  shards: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Item:
  """One pool image (or the reason it could not be read)."""

  id: str
  image: np.ndarray | None
  provenance: dict
  error: str = ""


def _scale01(image: np.ndarray, path: str) -> np.ndarray:
  image = readers.check_pixels(np.asarray(image, np.float32), path)
  return (image - image.min()) / (image.max() - image.min())


class ReadFile:
  """Grain map (picklable): a file path -> an `Item`, its error set when it cannot be read; a
  file whose id is in `done` is not read (its Item has no image)."""

  def __init__(self, root: str, done: frozenset[str] = frozenset()):
    self.root, self.done = root, done

  def __call__(self, path: str) -> Item:
    item_id = os.path.relpath(path, self.root)
    provenance = {"source": "folder", "path": os.path.abspath(path)}
    if item_id in self.done:
      return Item(item_id, None, provenance)
    try:
      if path.lower().endswith(IMAGE_EXTENSIONS):
        image = readers.check_pixels(readers.read_png(path), path)
      else:
        with warnings.catch_warnings():
          warnings.simplefilter("ignore")
          volume, kind, _ = readers.read_any(path)
        middle = volume.shape[-1] // 2
        image = _scale01(volume[..., middle], path)
        provenance.update(kind=kind, slice=int(middle), slices=int(volume.shape[-1]))
    except readers.BadInput as error:
      return Item(item_id, None, provenance, error.reason)
    except Exception as error:  # a reader's own failure on a malformed file
      return Item(item_id, None, provenance, f"unreadable ({type(error).__name__}: {error})")
    return Item(item_id, image, provenance)


def folder_paths(folder: str) -> list[str]:
  """Image files under `folder` (recursive), sorted; ValueError when there is no such folder."""
  if not os.path.isdir(folder):
    raise ValueError(f"{folder}: no such image folder")
  paths = glob.glob(os.path.join(folder, "**", "*"), recursive=True)
  extensions = IMAGE_EXTENSIONS + VOLUME_EXTENSIONS
  return sorted(p for p in paths if os.path.isfile(p) and p.lower().endswith(extensions))


def _process_shard(shard_index, shard_count):
  if shard_index is None or shard_count is None:
    return jax.process_index(), jax.process_count()
  return shard_index, shard_count


def folder_source(
  folder: str,
  done: Collection[str] = (),
  shard_index: int | None = None,
  shard_count: int | None = None,
) -> Iterator[Item]:
  """This process's share of the folder's images as Items (Grain: source -> shard -> read).
  The share is of the whole sorted file list, so it is the same whatever is already done; files
  whose id is in `done` are not read."""
  shard_index, shard_count = _process_shard(shard_index, shard_count)
  paths = grain.MapDataset.source(folder_paths(folder))[shard_index::shard_count]
  yield from paths.map(ReadFile(folder, frozenset(done))).to_iter_dataset()


def dataset_source(
  data_config,
  split: str,
  field: str = "low",
  batch_size: int = 16,
  shard_index: int | None = None,
  shard_count: int | None = None,
) -> Iterator[Item]:
  """Items of one split of the precomputed dataset (image `field`), through the one loader,
  one pass, in stored order, this process's shard."""
  from data_pipeline import loader  # pylint: disable=g-import-not-at-top

  shard_index, shard_count = _process_shard(shard_index, shard_count)
  batches = loader.make_loader(
    data_config,
    split,
    worker_count=0,
    batch_size=batch_size,
    num_epochs=1,
    shuffle=False,
    shard_index=shard_index,
    shard_count=shard_count,
    drop_remainder=False,
  )
  for batch in batches:
    for index, example_id in enumerate(batch["id"]):
      provenance = {
        "source": "dataset",
        "split": split,
        "field": field,
        "modality": str(batch["modality"][index]),
        "task": str(batch["task"][index]),
        "severity": str(batch["severity"][index]),
        "provenance": json.loads(str(batch["provenance"][index])),
      }
      yield Item(f"{example_id}:{field}", np.asarray(batch[field][index]), provenance)


def embed(
  items: Iterator[Item] | list[Item],
  encoder: Encoder,
  pool_dir: str,
  batch_size: int = 16,
  shard_rows: int = 65536,
  process_index: int | None = None,
) -> EmbedReport:
  """Encodes `items` in batches and appends them to the pool at `pool_dir` (shards committed as
  they fill, the rest on return). Items already in the pool are counted, not re-encoded."""
  process_index = jax.process_index() if process_index is None else process_index
  writer = PoolWriter(pool_dir, encoder.dim, encoder.name, shard_rows, process_index)
  report = EmbedReport()
  done = writer.done_ids()
  pending: list[Item] = []

  def flush():
    if pending:
      embeddings = encoder([item.image for item in pending])
      writer.add(embeddings, [item.id for item in pending], [item.provenance for item in pending])
      report.embedded += len(pending)
      pending.clear()

  for item in items:
    if item.id in done:
      report.already_done += 1
      continue
    if item.error:
      report.skipped.append((item.id, item.error))
      logging.warning(
        "skipping %s: %s (%d skipped so far)", item.id, item.error, len(report.skipped)
      )
      continue
    done.add(item.id)
    pending.append(item)
    if len(pending) >= batch_size:
      flush()
  flush()
  report.shards = writer.close()
  return report


def _done_ids(pool_dir: str) -> set[str]:
  from medq_jax.engine.pool_store import PoolStore  # pylint: disable=g-import-not-at-top

  return PoolStore(pool_dir).id_set() if os.path.isdir(pool_dir) else set()


def embed_folder(folder: str, encoder: Encoder, pool_dir: str, **kwargs) -> EmbedReport:
  """Embeds this process's share of `folder`'s images into `pool_dir` (resumes: files whose id
  is in the pool are neither read nor encoded)."""
  items = folder_source(folder, _done_ids(pool_dir))
  return embed(items, encoder, pool_dir, **kwargs)


def embed_dataset(
  data_config, split: str, encoder: Encoder, pool_dir: str, field: str = "low", **kwargs
) -> EmbedReport:
  """Embeds this process's share of a precomputed split's `field` images into `pool_dir`."""
  batch_size = kwargs.get("batch_size", 16)
  items = dataset_source(data_config, split, field, batch_size)
  return embed(items, encoder, pool_dir, **kwargs)
