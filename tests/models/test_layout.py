"""The layout packer: token order, splits, positions, loss masks and ViT patches."""

import numpy as np
import pytest

from configs import medq_uni
from medq_jax import layout as layout_lib
from medq_jax.models.vit import image_to_patches
from medq_jax.types import KIND_PAD, KIND_VIT, PAD_SAMPLE, SPLIT_CAUSAL, SPLIT_FULL, SPLIT_NOISE

SPECIAL = dict(pad=0, im_start=1, im_end=2, vision_start=3, vision_end=4)


class _CharTokenizer:
  def encode(self, text, add_special_tokens=False):
    return [5 + (ord(c) % 400) for c in text]


def _example(rng):
  return dict(
    id="ex1",
    low=rng.random((40, 40)).astype(np.float32),
    high=rng.random((40, 40)).astype(np.float32),
    instruction="fix it",
    description="mild noise",
  )


@pytest.mark.parametrize("stage", [1, 2])
def test_pack_example_layout(stage):
  config = medq_uni.get_config(f"size=tiny,stage={stage}")
  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, stage)
  row = layout_lib.pack_example(_example(np.random.default_rng(0)), _CharTokenizer(), spec, SPECIAL)
  kind, split, mode = row["und_kind"], row["und_split_ids"], row["und_split_modes"]
  real = kind != KIND_PAD
  n_text_instr = len("fix it") + 2
  # MedQ-Uni's order: VAE condition (split 0), ViT (1), instruction (2), [description (3)], target.
  # The VAE condition's two markers come first, at position 0, full mode.
  assert list(row["und_token_ids"][:2]) == [SPECIAL["vision_start"], SPECIAL["vision_end"]]
  assert list(split[:2]) == [0, 0] and list(mode[:2]) == [SPLIT_FULL] * 2
  assert list(row["und_positions"][:2]) == [0, 0]
  # ViT image: one split, one position, full mode, vit slots indexed 0..Nv-1
  vit = kind == KIND_VIT
  assert vit.sum() == spec.num_vit_tokens
  assert set(split[vit]) == {1} and set(mode[vit]) == {SPLIT_FULL}
  assert set(row["und_positions"][vit]) == {1}
  assert list(row["und_vit_index"][vit]) == list(range(spec.num_vit_tokens))
  # instruction: causal split 2 right after the ViT image (and its two markers), no loss
  start = 2 + spec.num_vit_tokens + 2
  instruction = slice(start, start + n_text_instr)
  assert list(split[instruction]) == [2] * n_text_instr
  assert set(mode[instruction]) == {SPLIT_CAUSAL}
  assert list(row["und_positions"][instruction]) == list(range(2, 2 + n_text_instr))
  assert not row["und_loss_mask"][instruction].any()
  # the gen condition shares split 0 and position 0 with its markers
  condition = ~row["gen_noised"]
  assert set(row["gen_split_ids"][condition]) == {0} and set(row["gen_positions"][condition]) == {0}
  target_split = 4 if stage == 2 else 3
  assert set(row["gen_split_ids"][row["gen_noised"]]) == {target_split}
  # gen stream: clean condition then noised target, one position per image
  gen_noised = row["gen_noised"]
  assert gen_noised.sum() == spec.tokens_per_image and not gen_noised[: spec.tokens_per_image].any()
  assert set(row["gen_split_modes"][gen_noised]) == {SPLIT_NOISE}
  assert set(row["gen_split_modes"][~gen_noised]) == {SPLIT_FULL}
  assert len(set(row["gen_positions"][gen_noised])) == 1
  assert row["gen_positions"][gen_noised][0] > row["gen_positions"][~gen_noised][0]
  # description loss only in stage 2; targets are the next token of the same text split
  loss = row["und_loss_mask"] > 0
  if stage == 1:
    assert not loss.any()
  else:
    desc = _CharTokenizer().encode("mild noise") + [SPECIAL["im_end"]]
    assert list(row["und_targets"][loss]) == desc
    assert set(mode[loss]) == {SPLIT_CAUSAL}
  # padding
  assert (row["und_sample_ids"][~real] == PAD_SAMPLE).all() and (
    row["und_sample_ids"][real] == 0
  ).all()
  assert row["vae_images"].shape == (2, spec.vae_image_size, spec.vae_image_size, 3)
  assert row["vae_images"].min() >= -1 and row["vae_images"].max() <= 1


def test_vit_patches_match_model_patchify():
  config = medq_uni.get_config("size=tiny")
  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, 1)
  image = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
  patches, ids = layout_lib.image_to_vit_patches(image, spec.vit_patch_size, spec.vit_grid_side)
  ref_patches, ref_ids = image_to_patches(image[None], spec.vit_patch_size, spec.vit_grid_side)
  np.testing.assert_array_equal(patches, np.asarray(ref_patches)[0])
  np.testing.assert_array_equal(ids, np.asarray(ref_ids)[0])


def test_too_long_and_bad_images_fail_naming_the_example():
  config = medq_uni.get_config("size=tiny,stage=2")
  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, 2)
  rng = np.random.default_rng(0)
  long_example = dict(_example(rng), description="x" * 500)
  with pytest.raises(layout_lib.LayoutError, match="ex1.*exceed layout.max_und_len"):
    layout_lib.pack_example(long_example, _CharTokenizer(), spec, SPECIAL)
  bad = dict(_example(rng), low=np.full((40, 40), np.nan, np.float32))
  with pytest.raises(layout_lib.LayoutError, match="ex1.*'low'.*NaN"):
    layout_lib.pack_example(bad, _CharTokenizer(), spec, SPECIAL)
  with pytest.raises(layout_lib.LayoutError, match="missing field 'description'"):
    layout_lib.pack_example(
      {"id": "ex1", "low": 1, "high": 1, "instruction": ""}, _CharTokenizer(), spec, SPECIAL
    )


def test_sequence_plan_is_data():
  """Stage 1 drops the description; guidance contexts drop items by name; unknown names fail."""
  names = lambda plan: [item.name for item in plan]
  assert names(layout_lib.MEDQ_UNI_PLAN) == [
    "vae_condition",
    "vit",
    "instruction",
    "description",
    "vae_target",
  ]
  assert names(layout_lib.sequence_plan(1)) == ["vae_condition", "vit", "instruction", "vae_target"]
  no_text = layout_lib.sequence_plan(2, drop=("instruction", "description"))
  assert names(no_text) == ["vae_condition", "vit", "vae_target"]
  with pytest.raises(ValueError, match="cannot drop \\['caption'\\]"):
    layout_lib.sequence_plan(2, drop=("caption",))
  # Packing a plan without the texts: no text tokens, positions still follow the plan.
  config = medq_uni.get_config("size=tiny,stage=2")
  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, 2)
  row = layout_lib.pack_example(
    _example(np.random.default_rng(0)), _CharTokenizer(), spec, SPECIAL, plan=no_text
  )
  real = row["und_kind"] != KIND_PAD
  assert real.sum() == 2 + (spec.num_vit_tokens + 2) + 2
  assert set(row["gen_split_ids"][row["gen_noised"]]) == {2}
  assert set(row["gen_positions"][row["gen_noised"]]) == {2}
