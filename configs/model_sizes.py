"""The one table of named model sizes: `tiny` (tests), `small` (CPU benchmarks), `base` (one GPU,
about 1.3B parameters) and `unimedvl_7b` (BAGEL-7B-MoT, the dimensions in shared/anchors/).
"""

from __future__ import annotations

import ml_collections

# Decoder (Qwen2 layout). head_dim = hidden_size // num_heads unless given.
_LLM = {
  "tiny": dict(
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    vocab_size=512,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    qk_norm=False,
  ),
  "small": dict(
    hidden_size=256,
    intermediate_size=704,
    num_layers=4,
    num_heads=8,
    num_kv_heads=2,
    vocab_size=2048,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    qk_norm=False,
  ),
  # Qwen2.5-0.5B dimensions, two experts: ~0.8B decoder + SigLIP so400m + FLUX VAE ~ 1.3B.
  "base": dict(
    hidden_size=896,
    intermediate_size=4864,
    num_layers=24,
    num_heads=14,
    num_kv_heads=2,
    vocab_size=151936,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    qk_norm=True,
  ),
  # shared/anchors/bagel7b_mot_llm_config__from_MedQ-Uni.json (Qwen2.5-7B dims x 2 experts).
  "unimedvl_7b": dict(
    hidden_size=3584,
    intermediate_size=18944,
    num_layers=28,
    num_heads=28,
    num_kv_heads=4,
    vocab_size=152064,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    qk_norm=True,
  ),
}

# SigLIP vision encoder. image_size is the largest side; its grid indexes position embeddings.
_VIT = {
  "tiny": dict(
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=2,
    patch_size=8,
    image_size=64,
    num_channels=3,
    layer_norm_eps=1e-6,
  ),
  "small": dict(
    hidden_size=128,
    intermediate_size=256,
    num_layers=2,
    num_heads=4,
    patch_size=8,
    image_size=128,
    num_channels=3,
    layer_norm_eps=1e-6,
  ),
  "base": dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_layers=26,
    num_heads=16,
    patch_size=14,
    image_size=980,
    num_channels=3,
    layer_norm_eps=1e-6,
  ),
  # shared/anchors/bagel7b_mot_vit_config__from_MedQ-Uni.json (SigLIP so400m, patch 14).
  "unimedvl_7b": dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_layers=26,
    num_heads=16,
    patch_size=14,
    image_size=980,
    num_channels=3,
    layer_norm_eps=1e-6,
  ),
}

_FLUX_VAE = dict(
  in_channels=3,
  out_channels=3,
  ch=128,
  ch_mult=(1, 2, 4, 4),
  num_res_blocks=2,
  z_channels=16,
  scale_factor=0.3611,
  shift_factor=0.1159,
  norm_groups=32,
)

# FLUX autoencoder layout. tiny/small shrink channels and downsample 2x (two levels), not 8x:
# at 32/64 px an 8x VAE cannot reconstruct above the degraded inputs' PSNR, and a 4x one trains
# too slowly on CPU to (docs/vae.md); a latent patch of 4 keeps 64 tokens per 64-px image. Their
# trained weights ship in medq_jax/assets/vae/ (stage 0: configs/vae_stage0.py); base and
# unimedvl_7b load FLUX's ae.safetensors (config.init.flux_ae).
# scale/shift of tiny/small: the shipped VAE's latent statistics on the train split (its log's
# latent_stats), so latents enter the flow at unit variance as FLUX's constants make its own.
_VAE = {
  "tiny": dict(
    _FLUX_VAE,
    ch=16,
    ch_mult=(1, 1),
    num_res_blocks=1,
    norm_groups=8,
    scale_factor=1.3012,
    shift_factor=-0.0129,
  ),
  "small": dict(
    _FLUX_VAE,
    ch=32,
    ch_mult=(1, 2),
    num_res_blocks=1,
    norm_groups=8,
    scale_factor=1.0409,
    shift_factor=0.0608,
  ),
  "base": dict(_FLUX_VAE),
  "unimedvl_7b": dict(_FLUX_VAE),
}

# Image sizes the layout packs: VAE side (multiple of downsampling * latent_patch), ViT side.
_IMAGES = {
  "tiny": dict(vae_image_size=32, vit_image_size=32, max_latent_size=16),
  "small": dict(vae_image_size=64, vit_image_size=64, max_latent_size=32),
  "base": dict(vae_image_size=256, vit_image_size=224, max_latent_size=64),
  "unimedvl_7b": dict(vae_image_size=512, vit_image_size=518, max_latent_size=64),
}

# Latent tokens are p x p patches of the VAE latent (BAGEL: p=2 on FLUX's x8 latent).
_LATENT_PATCH = {"tiny": 4, "small": 4, "base": 2, "unimedvl_7b": 2}

SIZES = tuple(_LLM)


def model_config(size: str, expert_scope: str = "ffn") -> ml_collections.ConfigDict:
  """Returns `config.model` for a named size."""
  if size not in _LLM:
    raise ValueError(f"config arg: unknown size {size!r}; known sizes: {list(SIZES)}")
  if expert_scope not in ("ffn", "all"):
    raise ValueError(f"config arg: expert_scope must be 'ffn' or 'all', got {expert_scope!r}")
  llm = dict(_LLM[size])
  llm["head_dim"] = llm["hidden_size"] // llm["num_heads"]
  return ml_collections.ConfigDict(
    dict(
      size=size,
      expert_scope=expert_scope,
      llm=llm,
      vit=dict(_VIT[size]),
      vae=dict(_VAE[size]),
      latent_patch_size=_LATENT_PATCH[size],
      max_latent_size=_IMAGES[size]["max_latent_size"],
      timestep_freq_dim=256,
      # "bagel": the condition reaches the target only through attention (BAGEL / MedQ-Uni,
      # the layout converted weights expect); "spatial": also added to the noised target token at
      # the same latent position through a zero-initialised projection (InstructPix2Pix-style
      # channel conditioning), which small models trained briefly need (docs/model.md).
      condition_injection="bagel",
      # Where the flow starts (t=1): "gaussian" noise (BAGEL / MedQ-Uni) or "degraded": the
      # degraded image's latents + flow_source_sigma * noise (InDI-style restoration flow, so
      # an untrained velocity already returns the input; docs/model.md).
      flow_source="gaussian",
      flow_source_sigma=0.1,
      dtype="float32",  # compute dtype; "bfloat16" on accelerators
      param_dtype="float32",  # master weights stay fp32
      scan_layers=True,
      # The scanned layers as straight-line code (same stacked params and checkpoints): no
      # zero-filled per-layer residual buffers, 9% of the `small` CPU step; a rolled loop (False)
      # keeps compile time independent of depth for the large sizes (docs/training.md).
      scan_unroll=size in ("tiny", "small"),
      remat_policy="none",  # none | full | dots_with_no_batch_dims_saveable
      # auto (chunked on one CPU device, else xla) | xla | chunked | cudnn | splash
      attention_impl="auto",
      # Training runs the LM head only at the positions with a description loss, as BAGEL's
      # lm_head(last_hidden_state[ce_loss_indexes]): at most this many per example (the layout
      # skips an example with more, naming it); 0 = every und position (tiny: its 512-token
      # vocabulary spells a description in up to ~165 tokens of its 320). small: the built-in
      # data's descriptions are at most 89 tokens in its 2048-token vocabulary.
      max_ce_tokens={"tiny": 0, "small": 192}.get(size, 512),
    )
  )


def image_config(size: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(_IMAGES[size]))
