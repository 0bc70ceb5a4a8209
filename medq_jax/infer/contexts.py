"""Inference inputs laid out by the training sequence plan, so the model sees at inference the
order, ids and RoPE positions it was trained on (`medq_jax.layout`).

A context is every plan item before the noised target, packed as one model chunk (und and gen
streams, ViT patches, the clean VAE condition's slots); the target is a separate chunk (its
two marker tokens and its latent tokens, one noise split) placed after the context at a per-row
(split, position). Guidance contexts are the plan with items dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from medq_jax import layout as layout_lib
from medq_jax.types import SPLIT_NOISE

OPEN = None  # a text item left open: <|im_start|> only, to be continued by decoding


def context_items(plan: layout_lib.SequencePlan) -> layout_lib.SequencePlan:
  """The plan's items before its noised target (the target must be last)."""
  if not plan or plan[-1].mode != SPLIT_NOISE:
    raise ValueError(f"sequence plan: the last item must be the noised target, got {plan}")
  return plan[:-1]


def build_context_row(
  plan: layout_lib.SequencePlan,
  text_ids: Mapping[str, Sequence[int] | None],
  spec: layout_lib.LayoutSpec,
  special: Mapping[str, int],
) -> tuple[layout_lib.RowBuilder, int | None]:
  """RowBuilder of the plan's context. text_ids maps each text item to its content ids, or to
  OPEN for the item decoding will continue (it must be the last context item). Returns the row
  and the split id of the open item (None when none is open)."""
  items = context_items(plan)
  row = layout_lib.RowBuilder()
  open_split = None
  for index, item in enumerate(items):
    if item.kind == "text":
      ids = text_ids.get(item.name, ())
      if ids is OPEN:
        if index != len(items) - 1:
          raise ValueError(f"only the last context item can be open, not {item.name!r}")
        open_split = row.split
        row.text([special["im_start"]], loss=False)
      else:
        row.text([special["im_start"], *ids, special["im_end"]], loss=False)
    elif item.kind == "vit":
      row.vit_image(spec.num_vit_tokens, special["vision_start"], special["vision_end"])
    else:
      row.vae_image(
        0,
        spec.latent_side,
        spec.max_latent_size,
        False,
        special["vision_start"],
        special["vision_end"],
      )
  return row, open_split


def stack_context(
  rows: Sequence[layout_lib.RowBuilder],
  spec: layout_lib.LayoutSpec,
  special: Mapping[str, int],
  vit_images: np.ndarray | None,
  und_len: int,
) -> dict[str, np.ndarray]:
  """Context rows -> one model chunk (numpy): und fields padded to `und_len` (LayoutError when a
  row does not fit), gen id fields, and ViT patches of `vit_images` [B, S, S, 3] in [-1, 1]
  when the plan has a ViT item. gen_latents/gen_timesteps are the caller's."""
  und = [layout_lib.finish_und(row, und_len, special, "inference") for row in rows]
  chunk = layout_lib.collate(und)
  chunk.pop("und_targets"), chunk.pop("und_loss_mask")
  gen_len = len(rows[0].gen["positions"])
  for key in ("latent_pos", "positions", "split_ids", "split_modes"):
    chunk[f"gen_{key}"] = np.asarray([row.gen[key] for row in rows], np.int32).reshape(
      len(rows), gen_len
    )
  chunk["gen_sample_ids"] = np.zeros_like(chunk["gen_positions"])
  if vit_images is not None and (chunk["und_kind"] == layout_lib.KIND_VIT).any():
    patches = [
      layout_lib.image_to_vit_patches(image, spec.vit_patch_size, spec.vit_grid_side)
      for image in vit_images
    ]
    chunk["vit_patches"] = np.stack([p for p, _ in patches])
    chunk["vit_position_ids"] = np.stack([i for _, i in patches])
    chunk["vit_valid"] = np.ones(chunk["vit_position_ids"].shape, np.bool_)
  return chunk


def last_token_index(chunk: Mapping[str, np.ndarray]) -> np.ndarray:
  """[B] index of each row's last real und token (where decoding continues)."""
  real = chunk["und_sample_ids"] >= 0
  return (real.shape[1] - 1 - np.argmax(real[:, ::-1], axis=1)).astype(np.int32)


def target_template(spec: layout_lib.LayoutSpec, special: Mapping[str, int]) -> dict:
  """The noised target as a chunk at split 0, position 0 (add each row's split and position):
  und = its two marker tokens, gen = its latent tokens, all one noise split."""
  row = layout_lib.RowBuilder()
  row.vae_image(
    1,
    spec.latent_side,
    spec.max_latent_size,
    True,
    special["vision_start"],
    special["vision_end"],
  )
  und = layout_lib.finish_und(row, 2, special, "target")
  chunk = {k: v[None] for k, v in und.items() if k not in ("und_targets", "und_loss_mask")}
  for key in ("latent_pos", "positions", "split_ids", "split_modes"):
    chunk[f"gen_{key}"] = np.asarray(row.gen[key], np.int32)[None]
  chunk["gen_sample_ids"] = np.zeros_like(chunk["gen_positions"])
  return chunk


def place_target(template: Mapping, split, position, rows: int) -> dict:
  """The target template for `rows` rows at per-row split and position ([B] arrays or ints);
  works on NumPy and JAX arrays alike (used inside jitted samplers)."""
  out = {}
  for key, value in template.items():
    value = jnp.broadcast_to(jnp.asarray(value), (rows,) + tuple(value.shape[1:]))
    if key.endswith("_split_ids"):
      value = value + jnp.asarray(split, jnp.int32).reshape(-1, 1)
    elif key.endswith("_positions"):
      value = value + jnp.asarray(position, jnp.int32).reshape(-1, 1)
    out[key] = value
  return out
