"""The shared vocabulary at the bottom of `medq_jax`: split modes, token kinds, padding ids and the
fields of a model batch with their per-row shapes and dtypes.

The layout contract (`medq_jax.layout`, which builds batches), the model (`medq_jax.models`,
which reads them) and everything above both import these names from here; this module imports
nothing of ours, so no layer has to import a sibling to agree on a constant.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# Attention mode of a logical split (BAGEL's `split_lens` / `attn_modes`).
SPLIT_CAUSAL = 0  # text: token i sees tokens j <= i of its split
SPLIT_FULL = 1  # a clean image (ViT or VAE condition): bidirectional inside the split
SPLIT_NOISE = 2  # a noised VAE target: bidirectional inside, invisible to every other split

# Sample id of padding tokens: they attend to, and are attended by, nothing but themselves.
PAD_SAMPLE = -1

# Kind of an und-stream token.
KIND_PAD = 0
KIND_TEXT = 1
KIND_VIT = 2

# BAGEL's name suffix for the generation expert's copy of a per-token weight (q_proj_moe_gen,
# mlp_moe_gen, norm_moe_gen): the model names its modules with it, conversion maps files by it.
GEN_SUFFIX = "_moe_gen"

STAGES = (1, 2)  # training stages: 1 = restoration expert alone, 2 = joint with the description

# Per-row fields of a packed layout batch: name -> (shape in symbolic sizes, dtype). Sizes:
# Lu und tokens, Lg gen tokens, Nv ViT tokens, F = 3 * patch**2 ViT patch features, S the VAE
# image side. The collated batch adds a leading batch axis to each.
BATCH_FIELDS: Mapping[str, tuple[tuple[str, ...], type]] = {
  "und_token_ids": (("Lu",), np.int32),
  "und_kind": (("Lu",), np.int32),
  "und_positions": (("Lu",), np.int32),
  "und_sample_ids": (("Lu",), np.int32),
  "und_split_ids": (("Lu",), np.int32),
  "und_split_modes": (("Lu",), np.int32),
  "und_vit_index": (("Lu",), np.int32),
  "und_targets": (("Lu",), np.int32),
  "und_loss_mask": (("Lu",), np.float32),
  "vit_patches": (("Nv", "F"), np.float32),
  "vit_position_ids": (("Nv",), np.int32),
  "vit_valid": (("Nv",), np.bool_),
  "vae_images": (("2", "S", "S", "3"), np.float32),  # (condition, target) in [-1, 1]
  "gen_image_index": (("Lg",), np.int32),
  "gen_latent_pos": (("Lg",), np.int32),
  "gen_positions": (("Lg",), np.int32),
  "gen_sample_ids": (("Lg",), np.int32),
  "gen_split_ids": (("Lg",), np.int32),
  "gen_split_modes": (("Lg",), np.int32),
  "gen_noised": (("Lg",), np.bool_),
  "gen_loss_mask": (("Lg",), np.float32),
  # index in the row's gen stream of the degraded image's token at the same latent position as
  # this noised target token (padding when the condition was dropped); -1 for other tokens
  "gen_cond_index": (("Lg",), np.int32),
}

# Inputs the train step adds to a batch before the model sees it (latent tokens of the VAE
# images, noised where `gen_noised`, and their timesteps). D = latent_patch**2 * z_channels.
MODEL_INPUT_FIELDS: Mapping[str, tuple[tuple[str, ...], type]] = {
  "gen_latents": (("Lg", "D"), np.float32),
  "gen_timesteps": (("Lg",), np.float32),
  # the clean condition latent aligned with each gen token (zeros where there is none or it was
  # dropped); read only by model.condition_injection="spatial"
  "gen_cond_latents": (("Lg", "D"), np.float32),
}


def latent_dim(model_config) -> int:
  """Channels of one latent token: latent_patch_size**2 * VAE z_channels (`config.model`)."""
  return int(model_config.latent_patch_size) ** 2 * int(model_config.vae.z_channels)


def field_shapes(
  sizes: Mapping[str, int], fields: Mapping[str, tuple[tuple[str, ...], type]] = BATCH_FIELDS
) -> dict[str, tuple[tuple[int, ...], type]]:
  """Resolves symbolic field shapes with `sizes` ({'Lu': 320, ...}); digits stand for themselves."""
  out = {}
  for name, (shape, dtype) in fields.items():
    out[name] = (tuple(int(d) if d.isdigit() else int(sizes[d]) for d in shape), dtype)
  return out
