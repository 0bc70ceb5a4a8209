"""The token-layout contract between data and model, and the packer that builds it.

The order of a sample is data: a sequence plan (`SequencePlan`, a tuple of `PlanItem`s, each
with its kind, expert, attention mode and loss), from which the packer derives token ids, split
ids, RoPE positions and masks. `MEDQ_UNI_PLAN` is MedQ-Uni's training order (so converted
UniMedVL/MedQ-Uni weights see the layout they were trained on):

  split 0 full    <|vision_start|> VAE(I_low) clean <|vision_end|>           gen (und markers)
  split 1 full    <|vision_start|> ViT(I_low) <|vision_end|>                 und
  split 2 causal  <|im_start|> instruction <|im_end|>                        und, no loss
  split 3 causal  <|im_start|> description <|im_end|>     (CE loss)          und
  split 4 noise   <|vision_start|> VAE(I_high) noised <|vision_end|> (flow)  gen (und markers)

Stage 1 is the same plan without the description (`sequence_plan(1)`); guidance contexts are
the plan with items dropped (`sequence_plan(stage, drop=...)`).

Condition dropout (classifier-free guidance training, BAGEL's data config): per example, with
the probabilities of `ConditionDropout`, the texts (instruction and description together: the
no-text guidance context), the ViT image and the clean VAE condition are each left out of the
row (`pack_example(..., dropped=...)`). As in BAGEL's packer a dropped image still takes one
RoPE position and a dropped text none; a dropped item opens no split; a dropped VAE condition
leaves its gen slot as padding (static shapes); a dropped description takes its CE loss with it.
The draws come from (seed, the example's stream index), so a resumed run replays its batches.

Text tokens advance the RoPE position by one; all tokens of one image (markers included) share
one position. A batch row holds one example (`pack_example`), or with
`layout.pack_examples_per_row` > 1 several, joined by `medq_jax.packing.pack_rows`; every array
has a static shape from `LayoutSpec`.

Batch keys (per row; the collated batch adds a leading [B]):
  und_token_ids, und_kind, und_positions, und_sample_ids, und_split_ids, und_split_modes,
  und_vit_index, und_targets, und_loss_mask                                      [Lu]
  vit_patches [Nv, p*p*3] (kh, kw, C order; SigLIP-normalised), vit_position_ids [Nv], vit_valid [Nv]
  vae_images [2, H, W, 3] in [-1, 1] (condition, target)
  gen_image_index, gen_latent_pos, gen_positions, gen_sample_ids, gen_split_ids,
  gen_split_modes, gen_noised, gen_loss_mask, gen_cond_index                     [Lg]
A packed row of K example slots (`medq_jax.packing`): und [Lu = layout.pack_max_und_len],
vit_* [K, Nv, ...], vae_images [2K, H, W, 3], gen [Lg = K * gen_len].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from skimage.transform import resize

from medq_jax.types import (
  BATCH_FIELDS,
  KIND_PAD,
  KIND_TEXT,
  KIND_VIT,
  MODEL_INPUT_FIELDS,
  PAD_SAMPLE,
  SPLIT_CAUSAL,
  SPLIT_FULL,
  SPLIT_NOISE,
  STAGES,
  field_shapes,
)


@dataclasses.dataclass(frozen=True)
class PlanItem:
  """One logical split of a sample: what it holds and how the model treats it."""

  name: str  # unique within a plan, e.g. "vae_condition"
  kind: str  # "text" | "vit" | "vae"
  expert: str  # "und" | "gen": whose per-token weights its content tokens use
  mode: int  # SPLIT_CAUSAL | SPLIT_FULL | SPLIT_NOISE
  loss: str  # "" (none) | "ce" (next-token) | "flow" (rectified flow + pixel losses)
  source: str  # the example field it reads: "low", "high", "instruction", "description"


SequencePlan = tuple[PlanItem, ...]

# MedQ-Uni's training order (see the module docstring).
MEDQ_UNI_PLAN: SequencePlan = (
  PlanItem("vae_condition", "vae", "gen", SPLIT_FULL, "", "low"),
  PlanItem("vit", "vit", "und", SPLIT_FULL, "", "low"),
  PlanItem("instruction", "text", "und", SPLIT_CAUSAL, "", "instruction"),
  PlanItem("description", "text", "und", SPLIT_CAUSAL, "ce", "description"),
  PlanItem("vae_target", "vae", "gen", SPLIT_NOISE, "flow", "high"),
)


# Condition dropout groups: a group name (`ConditionDropout` field) -> the plan items it drops.
DROPOUT_GROUPS: Mapping[str, tuple[str, ...]] = {
  "text": ("instruction", "description"),
  "vit": ("vit",),
  "vae": ("vae_condition",),
}
# RoPE positions a dropped item still takes, by kind (BAGEL `PackedDataset.pack_sequence`:
# `curr_rope_id += 1` for a dropped ViT or VAE image, nothing for a dropped text).
DROPPED_POSITION_ADVANCE: Mapping[str, int] = {"text": 0, "vit": 1, "vae": 1}
_DROPOUT_STREAM = 0x4D4551  # separates dropout draws from other users of the same seed
# VAE images of one example, in `vae_images` order: (clean condition, noised target).
IMAGES_PER_EXAMPLE = 2


@dataclasses.dataclass(frozen=True)
class ConditionDropout:
  """Per-example probabilities of dropping each condition group (`DROPOUT_GROUPS`), drawn
  independently from (seed, the example's stream index): deterministic and resumable.

  BAGEL trains with text 0.1, ViT 0.3-0.4, VAE 0.1-0.3; MedQ-Uni fine-tuned UniMedVL with all 0.
  """

  text: float = 0.0
  vit: float = 0.0
  vae: float = 0.0
  seed: int = 0

  def __post_init__(self):
    for group in DROPOUT_GROUPS:
      p = getattr(self, group)
      if not 0.0 <= p <= 1.0:
        raise ValueError(f"train.dropout_{group}: expected a probability in [0, 1], got {p!r}")

  @classmethod
  def from_config(cls, train_config) -> ConditionDropout:
    """From `config.train` (dropout_text, dropout_vit, dropout_vae, seed)."""
    return cls(
      float(train_config.dropout_text),
      float(train_config.dropout_vit),
      float(train_config.dropout_vae),
      int(train_config.seed),
    )

  @property
  def active(self) -> bool:
    return any(getattr(self, group) > 0 for group in DROPOUT_GROUPS)

  def draw(self, stream_index: int) -> tuple[str, ...]:
    """Names of the plan items dropped for the example at `stream_index` (>= 0)."""
    draws = np.random.default_rng([self.seed, _DROPOUT_STREAM, int(stream_index)]).random(
      len(DROPOUT_GROUPS)
    )
    return tuple(
      name
      for (group, names), u in zip(DROPOUT_GROUPS.items(), draws)
      if u < getattr(self, group)
      for name in names
    )


def sequence_plan(stage: int, drop: Sequence[str] = (), base: SequencePlan = MEDQ_UNI_PLAN):
  """The plan of a training stage (stage 1 has no description), minus the items named in
  `drop` (guidance contexts: e.g. drop=("instruction", "description") is the no-text context)."""
  if stage not in STAGES:
    raise ValueError(f"train.stage: expected one of {STAGES}, got {stage!r}")
  names = {item.name for item in base}
  unknown = sorted(set(drop) - names)
  if unknown:
    raise ValueError(f"sequence plan: cannot drop {unknown}; items: {sorted(names)}")
  dropped = set(drop) | ({"description"} if stage == 1 else set())
  return tuple(item for item in base if item.name not in dropped)


class LayoutError(ValueError):
  """An example cannot be packed (too long, wrong image shape, missing field)."""


@dataclasses.dataclass(frozen=True)
class LayoutSpec:
  """Static sizes of a packed row, derived from `config.model` and `config.layout`."""

  max_und_len: int
  vit_image_size: int
  vit_patch_size: int
  vit_grid_side: int
  vae_image_size: int
  vae_downsample: int
  latent_patch_size: int
  max_latent_size: int
  stage: int
  # Packing (`medq_jax.packing`): example slots per row (1: one example per row, no packing) and
  # the und tokens of a packed row (0: examples_per_row * max_und_len).
  examples_per_row: int = 1
  pack_max_und_len: int = 0
  # Description (CE) tokens allowed per example: the LM head runs on at most this many
  # positions per example slot in training (`model.max_ce_tokens`; 0: no limit).
  max_ce_tokens: int = 0
  # Images of different sizes in one batch (`layout.vae_min_image_size`): 0 packs every example
  # at vae_image_size; else each at its own side, stride-aligned and clamped to
  # [vae_min_image_size, vae_image_size] (`example_vae_size`, BAGEL's ImageTransform rule).
  vae_min_image_size: int = 0

  @classmethod
  def from_config(cls, model, layout, stage: int) -> LayoutSpec:
    if stage not in STAGES:
      raise ValueError(f"train.stage: expected 1 or 2, got {stage!r}")
    spec = cls(
      max_und_len=layout.max_und_len,
      vit_image_size=layout.vit_image_size,
      vit_patch_size=model.vit.patch_size,
      vit_grid_side=model.vit.image_size // model.vit.patch_size,
      vae_image_size=layout.vae_image_size,
      vae_downsample=2 ** (len(model.vae.ch_mult) - 1),
      latent_patch_size=model.latent_patch_size,
      max_latent_size=model.max_latent_size,
      stage=stage,
      examples_per_row=int(layout.get("pack_examples_per_row", 1)),
      pack_max_und_len=int(layout.get("pack_max_und_len", 0)),
      max_ce_tokens=int(model.get("max_ce_tokens", 0)),
      vae_min_image_size=int(layout.get("vae_min_image_size", 0)),
    )
    spec.validate()
    return spec

  def validate(self):
    if self.max_ce_tokens < 0:
      raise ValueError(
        f"model.max_ce_tokens: expected >= 0 (0: no limit), got {self.max_ce_tokens}"
      )
    if self.examples_per_row < 1:
      raise ValueError(f"layout.pack_examples_per_row: expected >= 1, got {self.examples_per_row}")
    if self.pack_max_und_len and self.pack_max_und_len < self.max_und_len:
      raise ValueError(
        f"layout.pack_max_und_len={self.pack_max_und_len} is below layout.max_und_len="
        f"{self.max_und_len} (one example must fit a row; 0 means examples_per_row * max_und_len)"
      )
    if self.vit_image_size % self.vit_patch_size:
      raise ValueError(
        f"layout.vit_image_size={self.vit_image_size} is not a multiple of the "
        f"ViT patch size {self.vit_patch_size}"
      )
    if self.vit_image_size // self.vit_patch_size > self.vit_grid_side:
      raise ValueError(
        f"layout.vit_image_size={self.vit_image_size} exceeds the ViT position grid "
        f"({self.vit_grid_side} patches per side)"
      )
    unit = self.vae_unit
    if self.vae_min_image_size and not (
      unit <= self.vae_min_image_size <= self.vae_image_size and self.vae_min_image_size % unit == 0
    ):
      raise ValueError(
        f"layout.vae_min_image_size={self.vae_min_image_size}: expected 0 (every example at "
        f"layout.vae_image_size) or a multiple of {unit} in [{unit}, {self.vae_image_size}]"
      )
    if self.vae_image_size % unit:
      raise ValueError(
        f"layout.vae_image_size={self.vae_image_size} must be a multiple of {unit} "
        "(VAE downsampling x latent patch)"
      )
    if self.latent_side > self.max_latent_size:
      raise ValueError(
        f"layout.vae_image_size={self.vae_image_size} gives {self.latent_side} latent "
        f"patches per side > model.max_latent_size={self.max_latent_size}"
      )

  @property
  def vae_unit(self) -> int:
    """Pixels per gen token side: VAE downsampling x latent patch."""
    return self.vae_downsample * self.latent_patch_size

  def example_vae_size(self, example: Mapping[str, Any]) -> int:
    """The VAE side `pack_example` packs this example at: `vae_image_size`, or with
    `vae_min_image_size` set, its target's own shorter side rounded down to the stride and
    clamped to [vae_min_image_size, vae_image_size] (BAGEL's ImageTransform: no image is
    upsampled past its own size except to the minimum, none exceeds the maximum)."""
    shape = np.shape(example.get("high", ()))
    if not self.vae_min_image_size or len(shape) < 2:  # a bad image: pack_example names it
      return self.vae_image_size
    own = min(shape[:2])
    aligned = own // self.vae_unit * self.vae_unit
    return int(min(max(aligned, self.vae_min_image_size), self.vae_image_size))

  @property
  def vit_side(self) -> int:
    return self.vit_image_size // self.vit_patch_size

  @property
  def num_vit_tokens(self) -> int:
    return self.vit_side**2

  @property
  def latent_side(self) -> int:
    return self.vae_image_size // self.vae_unit

  @property
  def tokens_per_image(self) -> int:
    return self.latent_side**2

  @property
  def gen_len(self) -> int:
    """gen tokens of one example: its VAE images' latent tokens."""
    return IMAGES_PER_EXAMPLE * self.tokens_per_image

  @property
  def packed(self) -> bool:
    return self.examples_per_row > 1

  @property
  def row_und_len(self) -> int:
    """und tokens of a batch row (Lu): max_und_len, or the packing budget."""
    if not self.packed:
      return self.max_und_len
    return self.pack_max_und_len or self.examples_per_row * self.max_und_len

  @property
  def row_gen_len(self) -> int:
    """gen tokens of a batch row (Lg)."""
    return self.examples_per_row * self.gen_len


def image_to_vit_patches(image: np.ndarray, patch: int, grid_side: int):
  """[H, W, C] in [-1, 1] -> (patches [N, p*p*C] in BAGEL's (kh, kw, C) order, position ids [N]).

  NumPy twin of `medq_jax.models.vit.image_to_patches` (kept NumPy so Grain workers need no JAX).
  """
  height, width, channels = image.shape
  rows, cols = height // patch, width // patch
  patches = image.reshape(rows, patch, cols, patch, channels).transpose(0, 2, 1, 3, 4)
  patches = patches.reshape(rows * cols, channels * patch * patch)
  ids = (np.arange(rows)[:, None] * grid_side + np.arange(cols)[None, :]).reshape(-1)
  return patches.astype(np.float32), ids.astype(np.int32)


def to_rgb(image: np.ndarray, size: int, name: str, example_id: str) -> np.ndarray:
  """Grey [H, W] in [0, 1] -> [size, size, 3] in [-1, 1]."""
  image = np.asarray(image, np.float32)
  if image.ndim != 2 or min(image.shape) < 2:
    raise LayoutError(
      f"example {example_id}: field {name!r} must be a 2-D image, got shape {image.shape}"
    )
  if not np.isfinite(image).all():
    raise LayoutError(f"example {example_id}: field {name!r} has NaN/Inf pixels")
  if image.shape != (size, size):
    image = resize(image, (size, size), order=1, anti_aliasing=True, preserve_range=True)
  image = np.clip(image, 0.0, 1.0) * 2.0 - 1.0
  return np.repeat(image[..., None], 3, axis=-1).astype(np.float32)


class RowBuilder:
  """Accumulates und/gen tokens of one row in logical order."""

  def __init__(self):
    self.und = {
      k: []
      for k in (
        "token_ids",
        "kind",
        "positions",
        "split_ids",
        "split_modes",
        "vit_index",
        "targets",
        "loss_mask",
      )
    }
    self.gen = {
      k: []
      for k in (
        "image_index",
        "latent_pos",
        "positions",
        "sample_ids",
        "split_ids",
        "split_modes",
        "noised",
      )
    }
    self.position = 0
    self.split = 0

  def _und_span(
    self, tokens, kinds, mode, *, positions=None, vit_index=None, targets=None, loss=None
  ):
    """Appends a span of und tokens of one split (lists extended at once: packing is per row on
    the input path, so per-token appends would dominate it)."""
    count = len(tokens)
    und = self.und
    und["token_ids"].extend(tokens)
    und["kind"].extend(kinds)
    und["positions"].extend(positions if positions is not None else [self.position] * count)
    und["split_ids"].extend([self.split] * count)
    und["split_modes"].extend([mode] * count)
    und["vit_index"].extend(vit_index if vit_index is not None else [0] * count)
    und["targets"].extend(targets if targets is not None else [-1] * count)
    und["loss_mask"].extend(loss if loss is not None else [0.0] * count)

  def text(self, ids: Sequence[int], loss: bool):
    """A causal text split; with `loss`, every token but the last predicts the next one."""
    ids = list(ids)
    count = len(ids)
    self._und_span(
      ids,
      [KIND_TEXT] * count,
      SPLIT_CAUSAL,
      positions=list(range(self.position, self.position + count)),
      targets=ids[1:] + [-1] if count else [],
      loss=[float(loss)] * (count - 1) + [0.0] if count else [],
    )
    self.position += count
    self.split += 1

  def vit_image(self, num_tokens: int, start: int, end: int, first_index: int = 0):
    """<|vision_start|> ViT tokens <|vision_end|>: one full split at one RoPE position."""
    self._und_span(
      [start] + [0] * num_tokens + [end],
      [KIND_TEXT] + [KIND_VIT] * num_tokens + [KIND_TEXT],
      SPLIT_FULL,
      vit_index=[0, *range(first_index, first_index + num_tokens), 0],
    )
    self.position += 1
    self.split += 1

  def vae_image(
    self,
    image_index: int,
    side: int,
    max_side: int,
    noised: bool,
    start: int,
    end: int,
    slot_side: int | None = None,
  ):
    """A VAE image: its two marker tokens in the und stream, side**2 latent tokens in the gen
    stream, one split (noise mode when `noised`) at one RoPE position.

    slot_side (>= side; default side): the gen slot is the slot_side**2 tokens of the latent grid
    of an image of the row's full size, in raster order; an image smaller than that (mixed sizes
    in a batch) fills its top-left side x side tokens, the rest of the slot is padding (sample
    PAD_SAMPLE, no loss). Its real tokens are those of the same image in a slot of its own size."""
    slot_side = side if slot_side is None else slot_side
    mode = SPLIT_NOISE if noised else SPLIT_FULL
    self._und_span([start, end], [KIND_TEXT, KIND_TEXT], mode)
    rows, cols = np.meshgrid(np.arange(slot_side), np.arange(slot_side), indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    real = ((rows < side) & (cols < side)).tolist()
    count = len(real)
    gen = self.gen
    gen["image_index"].extend([image_index] * count)
    gen["latent_pos"].extend((rows * max_side + cols).tolist())
    gen["positions"].extend([self.position if r else 0 for r in real])
    gen["sample_ids"].extend([0 if r else PAD_SAMPLE for r in real])
    gen["split_ids"].extend([self.split if r else 0 for r in real])
    gen["split_modes"].extend([mode if r else SPLIT_CAUSAL for r in real])
    gen["noised"].extend([noised and r for r in real])
    self.position += 1
    self.split += 1

  def dropped(self, advance: int):
    """A dropped item (condition dropout): no tokens, no split, `advance` RoPE positions."""
    self.position += advance

  def gen_padding(self, image_index: int, side: int, max_side: int):
    """The gen slot of a dropped VAE image as padding (sample PAD_SAMPLE, no loss), so the gen
    stream keeps its static [condition, target] layout."""
    latent_pos = (np.arange(side)[:, None] * max_side + np.arange(side)[None, :]).reshape(-1)
    count = len(latent_pos)
    gen = self.gen
    gen["image_index"].extend([image_index] * count)
    gen["latent_pos"].extend(latent_pos.tolist())
    gen["positions"].extend([0] * count)
    gen["sample_ids"].extend([PAD_SAMPLE] * count)
    gen["split_ids"].extend([0] * count)
    gen["split_modes"].extend([SPLIT_CAUSAL] * count)
    gen["noised"].extend([False] * count)


def finish_und(
  row: RowBuilder, max_und_len: int, special: Mapping[str, int], example_id: str
) -> dict[str, np.ndarray]:
  """Pads the und tokens of `row` to `max_und_len`; raises LayoutError when they do not fit."""
  und_len = len(row.und["token_ids"])
  if und_len > max_und_len:
    raise LayoutError(
      f"example {example_id}: {und_len} und tokens exceed layout.max_und_len="
      f"{max_und_len} (shorten the texts or raise the limit)"
    )
  pad = max_und_len - und_len
  out = {}
  pad_values = dict(token_ids=special["pad"], kind=KIND_PAD, targets=-1)
  for key, values in row.und.items():
    dtype = np.float32 if key == "loss_mask" else np.int32
    out[f"und_{key}"] = np.asarray(values + [pad_values.get(key, 0)] * pad, dtype)
  out["und_sample_ids"] = np.where(out["und_kind"] == KIND_PAD, PAD_SAMPLE, 0).astype(np.int32)
  return out


def condition_index(latent_pos, noised) -> np.ndarray:
  """`gen_cond_index` of one row: for each noised target token, the index of the clean gen token
  at the same latent position nearest before it (its example's degraded-image slot, also when
  that condition was dropped and the slot is padding: the consumer checks the slot's sample id);
  -1 for every other token."""
  latent_pos, noised = np.asarray(latent_pos), np.asarray(noised, bool)
  index = np.full(latent_pos.shape, -1, np.int32)
  last = {}
  for i, (pos, is_noised) in enumerate(zip(latent_pos.tolist(), noised.tolist())):
    if is_noised:
      index[i] = last.get(pos, -1)
    else:
      last[pos] = i
  return index


def pack_example(
  example: Mapping[str, Any],
  tokenizer,
  spec: LayoutSpec,
  special: Mapping[str, int],
  plan: SequencePlan | None = None,
  dropped: Sequence[str] = (),
  vae_size: int | None = None,
) -> dict[str, np.ndarray]:
  """Packs one data-pipeline example into a fixed-shape row following `plan` (default: the
  stage's `sequence_plan`). The plan must hold exactly one ViT image and the VAE images as
  (clean condition, noised target): `vae_images` is [condition, target].

  dropped: names of plan items left out of this row (condition dropout): unlike an item absent
  from `plan`, a dropped image still takes its RoPE position (`DROPPED_POSITION_ADVANCE`) and a
  dropped VAE image keeps its gen slot, as padding.

  vae_size: this example's VAE image side (default and at most `spec.vae_image_size`, a multiple
  of the VAE x latent-patch unit): images of different sizes in one batch. Its images are
  resized to vae_size and padded (zeros, top-left) to the row's vae_image_size; its gen slots
  keep the full size's tokens, those outside its own latent grid padding (`RowBuilder.vae_image`).

  Raises LayoutError naming the example and field when it cannot be packed.
  """
  example_id = str(example.get("id", "<no id>"))
  vae_size = spec.vae_image_size if vae_size is None else int(vae_size)
  unit = spec.vae_unit
  if not (unit <= vae_size <= spec.vae_image_size and vae_size % unit == 0):
    raise LayoutError(
      f"example {example_id}: vae_size={vae_size} must be a multiple of {unit} in "
      f"[{unit}, layout.vae_image_size={spec.vae_image_size}]"
    )
  plan = sequence_plan(spec.stage) if plan is None else plan
  names = [item.name for item in plan]
  unknown = sorted(set(dropped) - set(names))
  if unknown:
    raise ValueError(f"dropped: {unknown} are not items of the plan {names}")
  targets = [item.name for item in plan if item.loss == "flow" and item.name in dropped]
  if targets:
    raise ValueError(f"dropped: {targets} is the restoration target; only conditions drop")
  for field in dict.fromkeys(item.source for item in plan):
    if field not in example:
      raise LayoutError(f"example {example_id}: missing field {field!r}")
  encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
  row = RowBuilder()
  vae_items = [item for item in plan if item.kind == "vae"]
  for item in plan:
    if item.name in dropped:
      row.dropped(DROPPED_POSITION_ADVANCE[item.kind])
      if item.kind == "vae":
        row.gen_padding(vae_items.index(item), spec.latent_side, spec.max_latent_size)
    elif item.kind == "text":
      ids = [special["im_start"], *encode(example[item.source]), special["im_end"]]
      row.text(ids, loss=item.loss == "ce")
    elif item.kind == "vit":
      row.vit_image(spec.num_vit_tokens, special["vision_start"], special["vision_end"])
    else:
      row.vae_image(
        vae_items.index(item),
        vae_size // unit,
        spec.max_latent_size,
        item.mode == SPLIT_NOISE,
        special["vision_start"],
        special["vision_end"],
        slot_side=spec.latent_side,
      )

  out = finish_und(row, spec.max_und_len, special, example_id)
  ce_tokens = int(np.count_nonzero(out["und_loss_mask"]))
  if spec.max_ce_tokens and ce_tokens > spec.max_ce_tokens:
    raise LayoutError(
      f"example {example_id}: {ce_tokens} description tokens carry the CE loss, over "
      f"model.max_ce_tokens={spec.max_ce_tokens} (the LM head's positions per example in "
      "training; shorten the description, raise the limit, or 0 for every position)"
    )
  for key, values in row.gen.items():
    out[f"gen_{key}"] = np.asarray(values, np.bool_ if key == "noised" else np.int32)
  out["gen_loss_mask"] = out["gen_noised"].astype(np.float32)
  out["gen_cond_index"] = condition_index(out["gen_latent_pos"], out["gen_noised"])

  vit_image = to_rgb(example["low"], spec.vit_image_size, "low", example_id)
  out["vit_patches"], out["vit_position_ids"] = image_to_vit_patches(
    vit_image, spec.vit_patch_size, spec.vit_grid_side
  )
  out["vit_valid"] = np.ones(spec.num_vit_tokens, np.bool_)
  out["vae_images"] = np.zeros(
    (IMAGES_PER_EXAMPLE, spec.vae_image_size, spec.vae_image_size, 3), np.float32
  )
  for index, field in enumerate(("low", "high")):
    out["vae_images"][index, :vae_size, :vae_size] = to_rgb(
      example[field], vae_size, field, example_id
    )
  return out


def collate(rows: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Stacks packed rows into a batch with a leading [B] axis."""
  return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


class PackExamples:
  """Picklable example transform: example dict -> packed row (the trainer's transform of the
  data loader; raises LayoutError for an example that does not fit, which the loader skips).

  With an active `dropout`, each example must carry its stream index in `index_field` (the
  loader's `make_loader(..., stream_index=True)`); the dropped items are drawn from it."""

  def __init__(
    self,
    tokenizer_dir: str,
    spec: LayoutSpec,
    dropout: ConditionDropout | None = None,
    index_field: str = "stream_index",
  ):
    self.tokenizer_dir = tokenizer_dir
    self.spec = spec
    self.dropout = dropout
    self.index_field = index_field
    self._plan_names = {item.name for item in sequence_plan(spec.stage)}
    self._tokenizer = None

  def dropped(self, example) -> tuple[str, ...]:
    """The plan items condition dropout leaves out of this example's row."""
    if self.dropout is None or not self.dropout.active:
      return ()
    if self.index_field not in example:
      raise ValueError(
        f"example {example.get('id', '<no id>')}: condition dropout needs its stream index in "
        f"field {self.index_field!r} (load with make_loader(..., stream_index=True))"
      )
    drawn = self.dropout.draw(int(example[self.index_field]))
    return tuple(name for name in drawn if name in self._plan_names)

  def map(self, example):
    if self._tokenizer is None:
      from medq_jax.tokenizer import load_tokenizer, special_ids

      self._tokenizer = load_tokenizer(self.tokenizer_dir)
      self._special = special_ids(self._tokenizer)
    return pack_example(
      example,
      self._tokenizer,
      self.spec,
      self._special,
      dropped=self.dropped(example),
      vae_size=self.spec.example_vae_size(example),
    )

  __call__ = map


def zeros_batch(spec: LayoutSpec, batch_size: int, latent_dim: int) -> dict[str, np.ndarray]:
  """A zero batch with the exact shapes/dtypes of a collated layout batch (`types.BATCH_FIELDS`)
  plus the model's gen inputs (`types.MODEL_INPUT_FIELDS`: `gen_latents` [B, Lg, latent_dim],
  `gen_timesteps` [B, Lg]); for init and AOT compilation. Packed rows (`spec.packed`) have the
  packed shapes (vit_* [B, K, Nv, ...], vae_images [B, 2K, ...])."""
  sizes = dict(
    Lu=spec.row_und_len,
    Lg=spec.row_gen_len,
    Nv=spec.num_vit_tokens,
    F=3 * spec.vit_patch_size**2,
    S=spec.vae_image_size,
    D=latent_dim,
  )
  shapes = field_shapes(sizes, {**BATCH_FIELDS, **MODEL_INPUT_FIELDS})
  slots = spec.examples_per_row
  out = {k: np.zeros((batch_size,) + shape, dtype) for k, (shape, dtype) in shapes.items()}
  if spec.packed:
    for key in ("vit_patches", "vit_position_ids", "vit_valid"):
      shape, dtype = shapes[key]
      out[key] = np.zeros((batch_size, slots) + shape, dtype)
    shape, dtype = shapes["vae_images"]
    out["vae_images"] = np.zeros((batch_size, slots * shape[0]) + shape[1:], dtype)
  return out


def text_batch(token_ids: np.ndarray, spec: LayoutSpec, latent_dim: int) -> dict[str, np.ndarray]:
  """A text-only batch (one causal split per row, empty gen stream) for token ids [B, L]:
  the und-only path used for LM likelihoods and for parity with plain Qwen2."""
  token_ids = np.asarray(token_ids, np.int32)
  batch_size, length = token_ids.shape
  base = zeros_batch(spec, batch_size, latent_dim)
  out = {k: v for k, v in base.items() if k.startswith("vit_")}
  positions = np.broadcast_to(np.arange(length, dtype=np.int32), (batch_size, length))
  out.update(
    und_token_ids=token_ids,
    und_kind=np.full_like(token_ids, KIND_TEXT),
    und_positions=positions.copy(),
    und_sample_ids=np.zeros_like(token_ids),
    und_split_ids=np.zeros_like(token_ids),
    und_split_modes=np.full_like(token_ids, SPLIT_CAUSAL),
    und_vit_index=np.zeros_like(token_ids),
  )
  out.update(empty_gen_stream(batch_size, latent_dim))
  return out


def empty_gen_stream(batch_size: int, latent_dim: int) -> dict[str, np.ndarray]:
  """The model's gen inputs with no gen tokens ([B, 0] ids, [B, 0, latent_dim] latents): the
  und-only path for text likelihoods and description."""
  out = {
    f"gen_{key}": np.zeros((batch_size, 0), np.int32)
    for key in ("positions", "sample_ids", "split_ids", "split_modes", "latent_pos")
  }
  out["gen_latents"] = np.zeros((batch_size, 0, latent_dim), np.float32)
  out["gen_timesteps"] = np.zeros((batch_size, 0), np.float32)
  return out
