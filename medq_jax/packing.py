"""Several examples in one batch row, up to a token budget (BAGEL's `PackedDataset`).

`pack_rows` joins single-example rows (`layout.pack_example`'s output) into one row of
`spec.examples_per_row` example slots (K). Example k of the row keeps its own tokens, RoPE
positions (they restart at 0 per example, as in BAGEL's `pack_sequence`) and masks; only ids that
index the row change:

  und stream   the examples' real tokens one after another, then padding to `spec.row_und_len`
               (BAGEL's max_num_tokens for the und stream); sample id k; split ids offset so the
               row's splits are numbered in order; und_vit_index offset by k * Nv
  ViT          vit_patches / vit_position_ids / vit_valid [K, Nv, ...] (slot k: example k)
  VAE images   vae_images [2K, S, S, 3]: example k's (condition, target) at 2k, 2k + 1
  gen stream   K slots of `spec.gen_len` tokens, slot k = example k's gen stream (a dropped
               condition and an image smaller than S keep their padding tokens): the gen stream
               stays the image-major flattening of vae_images' latent tokens, as in a row of one
               example; sample id k, split ids offset, gen_image_index + 2k, gen_cond_index +
               k * gen_len

Empty slots (a row closed before K examples) are padding everywhere (sample id PAD_SAMPLE, no
loss, zero images, vit_valid False). Distinct sample ids make `models.attention.allowed_mask`
isolate the examples: no token attends across them.

`PackRows` is the loader's chunk grouping (`data_pipeline.loader.make_loader(group=...)`): it
packs a chunk's rows in stream order, closing a row when the next example would exceed K
examples or the und budget (next fit, no reordering: deterministic, so a resumed run packs the
same rows).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from medq_jax.layout import IMAGES_PER_EXAMPLE, LayoutError, LayoutSpec
from medq_jax.types import KIND_PAD, KIND_VIT, PAD_SAMPLE, SPLIT_CAUSAL

Row = Mapping[str, np.ndarray]

# Values of the padding tokens of a packed row (keys without an entry pad with 0).
_UND_PAD = dict(kind=KIND_PAD, sample_ids=PAD_SAMPLE, targets=-1, split_modes=SPLIT_CAUSAL)
_GEN_PAD = dict(sample_ids=PAD_SAMPLE, cond_index=-1, split_modes=SPLIT_CAUSAL)


def und_length(row: Row) -> int:
  """Real (non-padding) und tokens of a single-example row: its cost in a row's und budget."""
  return int(np.count_nonzero(row["und_kind"] != KIND_PAD))


def _split_count(row: Row) -> int:
  """Splits of a single-example row (its split ids are 0..count-1 on real tokens)."""
  und = row["und_split_ids"][row["und_sample_ids"] != PAD_SAMPLE]
  gen = row["gen_split_ids"][row["gen_sample_ids"] != PAD_SAMPLE]
  return int(max(und.max(initial=-1), gen.max(initial=-1))) + 1


def _check_row(row: Row, spec: LayoutSpec, index: int) -> None:
  if row["und_token_ids"].ndim != 1 or row["vae_images"].shape[0] != IMAGES_PER_EXAMPLE:
    raise ValueError(
      f"pack_rows: row {index} is not a single-example row of layout.pack_example "
      f"(und {row['und_token_ids'].shape}, vae_images {row['vae_images'].shape})"
    )
  if row["gen_sample_ids"].shape != (spec.gen_len,):
    raise ValueError(
      f"pack_rows: row {index} has {row['gen_sample_ids'].shape[0]} gen tokens, expected "
      f"spec.gen_len={spec.gen_len}"
    )
  if np.any(row["und_sample_ids"] > 0) or np.any(row["gen_sample_ids"] > 0):
    raise ValueError(f"pack_rows: row {index} is already packed (sample ids > 0)")


def pack_rows(rows: Sequence[Row], spec: LayoutSpec, pad_id: int) -> dict[str, np.ndarray]:
  """One packed row of `spec.examples_per_row` slots from 1..K single-example rows, in order.

  pad_id: the tokenizer's pad token id (und padding). Raises LayoutError when the rows exceed
  the slots or the und budget `spec.row_und_len`.
  """
  slots, nv, gen_len = spec.examples_per_row, spec.num_vit_tokens, spec.gen_len
  if not 1 <= len(rows) <= slots:
    raise LayoutError(f"pack_rows: {len(rows)} examples for {slots} slots per row")
  for index, row in enumerate(rows):
    _check_row(row, spec, index)
  total = sum(und_length(row) for row in rows)
  if total > spec.row_und_len:
    raise LayoutError(
      f"pack_rows: {total} und tokens exceed layout.pack_max_und_len={spec.row_und_len}"
    )
  und_keys = [key for key in rows[0] if key.startswith("und_")]
  gen_keys = [key for key in rows[0] if key.startswith("gen_")]
  und = {key: [] for key in und_keys}
  gen = {key: [] for key in gen_keys}
  split_offset = 0
  for slot, row in enumerate(rows):
    real = row["und_kind"] != KIND_PAD
    for key in und_keys:
      values = row[key][real]
      if key == "und_sample_ids":
        values = np.full_like(values, slot)
      elif key == "und_split_ids":
        values = values + split_offset
      elif key == "und_vit_index":
        values = np.where(row["und_kind"][real] == KIND_VIT, values + slot * nv, values)
      und[key].append(values)
    is_real = row["gen_sample_ids"] != PAD_SAMPLE
    for key in gen_keys:
      values = row[key]
      if key == "gen_sample_ids":
        values = np.where(is_real, slot, PAD_SAMPLE)
      elif key == "gen_split_ids":
        values = np.where(is_real, values + split_offset, values)
      elif key == "gen_image_index":
        values = values + slot * IMAGES_PER_EXAMPLE
      elif key == "gen_cond_index":
        values = np.where(values >= 0, values + slot * gen_len, values)
      gen[key].append(values.astype(row[key].dtype))
    split_offset += _split_count(row)

  out = {}
  pad = spec.row_und_len - total
  for key in und_keys:
    fill = pad_id if key == "und_token_ids" else _UND_PAD.get(key[len("und_") :], 0)
    dtype = rows[0][key].dtype
    out[key] = np.concatenate(und[key] + [np.full(pad, fill, dtype)]).astype(dtype)
  empty = slots - len(rows)
  for key in gen_keys:
    fill = _GEN_PAD.get(key[len("gen_") :], 0)
    dtype = rows[0][key].dtype
    out[key] = np.concatenate(gen[key] + [np.full(empty * gen_len, fill, dtype)]).astype(dtype)
  for key in ("vit_patches", "vit_position_ids", "vit_valid", "vae_images"):
    stacked = np.stack([row[key] for row in rows])
    blank = np.zeros((empty,) + stacked.shape[1:], stacked.dtype)
    out[key] = np.concatenate([stacked, blank])
  # [K, 2, S, S, 3] -> [2K, S, S, 3]: image-major, example k's images at 2k, 2k + 1
  out["vae_images"] = out["vae_images"].reshape((-1,) + out["vae_images"].shape[2:])
  return out


def next_fit(lengths: Sequence[int], slots: int, budget: int) -> list[list[int]]:
  """Groups item indices in order: a group closes when the next item would make it exceed
  `slots` items or `budget` total length. Every length must be <= budget."""
  groups: list[list[int]] = []
  used = 0
  for index, length in enumerate(lengths):
    if length > budget:
      raise LayoutError(f"an example of {length} und tokens exceeds the row budget {budget}")
    if not groups or len(groups[-1]) == slots or used + length > budget:
      groups.append([])
      used = 0
    groups[-1].append(index)
    used += length
  return groups


class PackRows:
  """Picklable chunk grouping for the loader: a list of single-example rows -> the list of
  packed rows (`next_fit` under `spec.examples_per_row` and `spec.row_und_len`)."""

  def __init__(self, spec: LayoutSpec, pad_id: int):
    self.spec = spec
    self.pad_id = int(pad_id)

  def __call__(self, rows: Sequence[Row]) -> list[dict[str, np.ndarray]]:
    lengths = [und_length(row) for row in rows]
    groups = next_fit(lengths, self.spec.examples_per_row, self.spec.row_und_len)
    return [pack_rows([rows[i] for i in group], self.spec, self.pad_id) for group in groups]


def examples_in_batch(batch: Mapping[str, np.ndarray]) -> int:
  """Examples in a host batch: distinct non-padding sample ids per row, summed (rows of one
  example, packed rows and rows with empty slots alike). The trainer's examples/s counts these,
  not rows."""
  ids = np.asarray(batch["und_sample_ids"])
  return int(sum(np.unique(row[row != PAD_SAMPLE]).size for row in ids))
