"""Images of different sizes in one batch (layout.pack_example(..., vae_size=...)): a smaller
example's row in the full-size layout holds, on its real tokens, exactly the row of a layout of its
own size (the rest of each gen slot padding, its images padded top-left); packed next to a
full-size example its mask equals the BAGEL-style reference with nothing between examples, and the
model's outputs for it equal its outputs in a layout of its own size."""

import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import packing_testlib as lib
from test_packing import _bagel_reference, _packed_mask, _random_params, _tokens

from medq_jax import layout as layout_lib
from medq_jax import packing
from medq_jax.models.medq_uni import MedQUni
from medq_jax.types import PAD_SAMPLE

SMALL = 16  # tiny: vae_image_size 32, unit 8 (VAE x2, latent patch 4): 4x4 vs 2x2 latent tokens


def _rows(stage, dropped=()):
  full = lib.spec(stage)
  own = dataclasses.replace(full, vae_image_size=SMALL)
  example = lib.example(5)
  mixed = layout_lib.pack_example(
    example, lib.CharTokenizer(), full, lib.SPECIAL, dropped=dropped, vae_size=SMALL
  )
  alone = layout_lib.pack_example(example, lib.CharTokenizer(), own, lib.SPECIAL, dropped=dropped)
  return full, own, mixed, alone


@pytest.mark.parametrize("dropped", [(), ("vae_condition",)])
def test_small_image_row_is_its_own_size_row_on_real_tokens(dropped):
  full, own, mixed, alone = _rows(2, dropped)
  for key in [k for k in mixed if k.startswith(("und_", "vit_"))]:
    np.testing.assert_array_equal(mixed[key], alone[key], err_msg=key)
  real = mixed["gen_sample_ids"] != PAD_SAMPLE
  assert (
    mixed["gen_sample_ids"].shape == (full.gen_len,)
    and real.sum() == (alone["gen_sample_ids"] != PAD_SAMPLE).sum()
  )
  for key in ("image_index", "latent_pos", "positions", "split_ids", "split_modes", "noised"):
    alone_real = alone[f"gen_{key}"][alone["gen_sample_ids"] != PAD_SAMPLE]
    np.testing.assert_array_equal(mixed[f"gen_{key}"][real], alone_real, err_msg=key)
  assert not mixed["gen_loss_mask"][~real].any() and not mixed["gen_noised"][~real].any()
  np.testing.assert_array_equal(mixed["vae_images"][:, :SMALL, :SMALL], alone["vae_images"])
  assert not mixed["vae_images"][:, SMALL:].any() and not mixed["vae_images"][:, :, SMALL:].any()
  # each real target token's condition index points at the condition token at its position
  pointed = mixed["gen_cond_index"][mixed["gen_noised"]]
  np.testing.assert_array_equal(
    mixed["gen_latent_pos"][pointed], mixed["gen_latent_pos"][mixed["gen_noised"]]
  )


def test_mixed_sizes_packed_mask_and_outputs_equal_alone():
  stage = 2
  full, own, mixed, alone = _rows(stage)
  big = layout_lib.pack_example(lib.example(2), lib.CharTokenizer(), full, lib.SPECIAL)
  spec = dataclasses.replace(full, examples_per_row=2, pack_max_und_len=400)
  packed = packing.pack_rows([big, mixed], spec, lib.SPECIAL["pad"])
  mask, sample = _packed_mask(packed), _tokens(packed)[0]
  real = sample != PAD_SAMPLE
  np.testing.assert_array_equal(
    mask[np.ix_(real, real)], _bagel_reference(packed)[np.ix_(real, real)]
  )
  assert not mask[sample[:, None] != sample[None, :]].any()

  config = lib.config(stage)
  dim = config.model.latent_patch_size**2 * config.model.vae.z_channels
  rng = np.random.default_rng(1)
  latents = rng.normal(size=(spec.row_gen_len, dim)).astype(np.float32)
  times = np.where(packed["gen_noised"], 0.3, 0.0).astype(np.float32)
  model = MedQUni(config.model)
  params = _random_params(config.model)
  apply = jax.jit(lambda batch: model.apply({"params": params}, batch))
  out = apply(
    {k: jnp.asarray(v)[None] for k, v in packed.items()}
    | {"gen_latents": jnp.asarray(latents)[None], "gen_timesteps": jnp.asarray(times)[None]}
  )
  slot = slice(full.gen_len, 2 * full.gen_len)
  real_small = mixed["gen_sample_ids"] != PAD_SAMPLE
  alone_batch = {k: jnp.asarray(v)[None] for k, v in alone.items()}
  alone_batch["gen_latents"] = jnp.asarray(latents[slot][real_small])[None]
  alone_batch["gen_timesteps"] = jnp.asarray(times[slot][real_small])[None]
  solo = apply(alone_batch)
  np.testing.assert_allclose(
    out["velocity"][0, slot][real_small], solo["velocity"][0], rtol=2e-5, atol=2e-5
  )
  start = packing.und_length(big)
  length = packing.und_length(mixed)
  np.testing.assert_allclose(
    out["logits"][0, start : start + length], solo["logits"][0, :length], rtol=2e-5, atol=2e-5
  )


@pytest.mark.parametrize("size", [12, 40, 0])
def test_bad_vae_size_is_one_clear_error(size):
  with pytest.raises(layout_lib.LayoutError, match=f"example ex5: vae_size={size} must be"):
    layout_lib.pack_example(
      lib.example(5), lib.CharTokenizer(), lib.spec(2), lib.SPECIAL, vae_size=size
    )


def test_pixel_mask_of_a_small_target_is_its_top_left_block():
  """The train step's pixel mask for the pixel losses (`step.token_pixel_mask` of the target's
  loss-masked tokens) covers exactly the pixels a smaller image occupies in the canvas."""
  from medq_jax.train import step as step_lib

  full, _, mixed, _ = _rows(2)
  targets = step_lib.target_tokens(mixed["gen_loss_mask"][None], layout_lib.IMAGES_PER_EXAMPLE)
  side = full.vae_image_size
  mask = np.asarray(step_lib.token_pixel_mask(jnp.asarray(targets), side, side))[0]
  expected = np.zeros((side, side), bool)
  expected[:SMALL, :SMALL] = True
  np.testing.assert_array_equal(mask, expected)


def test_the_loaders_transform_packs_each_example_at_its_own_size(tmp_path):
  """`layout.vae_min_image_size` (BAGEL's ImageTransform rule): the trainer's transform packs each
  example at its own side rounded down to the stride, clamped to [min, vae_image_size]; each row
  equals `pack_example` at that size, and the stage-2 loss on the mixed batch is finite with
  pixel losses over each target's own pixels."""
  from medq_jax.tokenizer import load_tokenizer, special_ids, train_bpe_tokenizer
  from medq_jax.train import step as step_lib

  cfg = lib.config(2)
  cfg.layout.vae_min_image_size = 16
  spec = layout_lib.LayoutSpec.from_config(cfg.model, cfg.layout, 2)
  assert (spec.vae_unit, spec.vae_image_size) == (8, 32)
  # own sides -> packed sides: 12 up to the minimum, 16 and 24 as they are, 31 down to the
  # stride, 40 down to the maximum
  sides = {12: 16, 16: 16, 24: 24, 31: 24, 40: 32}
  examples = [lib.example(i, size=side) for i, side in enumerate(sides)]
  texts = [e[f] for e in examples for f in ("instruction", "description")]
  train_bpe_tokenizer(texts * 5, 512, str(tmp_path / "tok"))
  transform = layout_lib.PackExamples(str(tmp_path / "tok"), spec)
  tokenizer = load_tokenizer(str(tmp_path / "tok"))
  special = special_ids(tokenizer)
  rows = []
  for example, (own, packed) in zip(examples, sides.items()):
    assert spec.example_vae_size(example) == packed, own
    row = transform(example)
    reference = layout_lib.pack_example(example, tokenizer, spec, special, vae_size=packed)
    for key in reference:
      np.testing.assert_array_equal(row[key], reference[key], err_msg=f"{own}: {key}")
    target_tokens = row["gen_loss_mask"][spec.tokens_per_image :]
    assert target_tokens.sum() == (packed // spec.vae_unit) ** 2
    rows.append(row)
  fixed = dataclasses.replace(spec, vae_min_image_size=0)
  assert fixed.example_vae_size(examples[0]) == 32  # the default: every example at full size

  model, vae, params, vae_params = lib.perturbed_models(cfg)
  loss_fn = jax.jit(step_lib.make_loss_fn(model, vae, cfg.model, cfg.train))
  loss, metrics = loss_fn(params, vae_params, layout_lib.collate(rows), jax.random.key(0))
  assert np.isfinite(float(loss)) and metrics["loss_l1"] > 0 and metrics["loss_ce"] > 0


@pytest.mark.parametrize("size", [4, 20, 64])
def test_bad_vae_min_image_size_is_one_clear_error(size):
  cfg = lib.config(2)
  cfg.layout.vae_min_image_size = size
  with pytest.raises(ValueError, match=f"layout.vae_min_image_size={size}: expected 0"):
    layout_lib.LayoutSpec.from_config(cfg.model, cfg.layout, 2)
