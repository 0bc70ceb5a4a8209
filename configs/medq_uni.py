"""MedQ-UNI training config (big_vision style).

Usage:
  medq-train --config=configs/medq_uni.py:size=tiny,stage=1
  medq-train --config=configs/medq_uni.py:size=small,stage=2,scope=all --config.train.steps=50

Options of the config arg: size (tiny|small|base|unimedvl_7b), stage (1|2), scope (ffn|all),
mesh (data,fsdp,tensor sizes, e.g. "1x-1x1").
"""

from __future__ import annotations

import ml_collections

from configs import common, model_sizes
from configs.data import medq_sample

# Logical axis -> mesh axis (or None = replicated). The one place parallelism is decided.
SHARDING_RULES = (
  # activations
  ("act_batch", ("data", "fsdp")),
  ("act_len", None),
  ("act_embed", None),
  ("act_heads", "tensor"),
  ("act_kv_heads", "tensor"),
  ("act_head_dim", None),
  ("act_mlp", "tensor"),
  ("act_vocab", "tensor"),
  # decoder parameters
  ("layers", None),
  ("embed", "fsdp"),
  ("embed_out", "tensor"),
  ("heads", "tensor"),
  ("kv_heads", "tensor"),
  ("head_dim", None),
  ("mlp", "tensor"),
  ("vocab", "tensor"),
  ("norm", None),
  ("latent", None),
  ("timestep_freq", None),
  # vision encoder
  ("vit_patch", None),
  ("vit_pos", None),
  ("vit_embed", "fsdp"),
  ("vit_mlp", "tensor"),
  ("vit_heads_x_dim", "tensor"),
  # VAE (frozen, small): replicated
  ("conv_h", None),
  ("conv_w", None),
  ("vae_in", None),
  ("vae_out", None),
  ("vae_channels", None),
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, size="tiny", stage=1, scope="ffn", mesh="1x-1x1")
  if arg.stage not in (1, 2):
    raise ValueError(f"config arg: stage must be 1 or 2, got {arg.stage}")
  config = ml_collections.ConfigDict()
  config.model = model_sizes.model_config(arg.size, arg.scope)
  images = model_sizes.image_config(arg.size)

  config.layout = ml_collections.ConfigDict(
    dict(
      max_und_len={"tiny": 320, "small": 384, "base": 768, "unimedvl_7b": 2048}[arg.size],
      vit_image_size=images.vit_image_size,
      vae_image_size=images.vae_image_size,
      tokenizer_dir="",  # empty: train a byte-level BPE on the data's texts into workdir
      tokenizer_vocab_size=config.model.llm.vocab_size,
    )
  )

  mesh_shape = tuple(int(x) for x in arg.mesh.split("x"))
  if len(mesh_shape) != 3:
    raise ValueError(f"config arg: mesh must be DATAxFSDPxTENSOR, got {arg.mesh!r}")
  config.mesh = ml_collections.ConfigDict(dict(shape=mesh_shape, axes=("data", "fsdp", "tensor")))
  config.sharding_rules = SHARDING_RULES

  config.train = ml_collections.ConfigDict(
    dict(
      stage=arg.stage,
      steps=20,
      batch_size=8,
      seed=0,
      learning_rate=2e-5 if arg.size in ("base", "unimedvl_7b") else 1e-3,
      warmup_steps=2,
      weight_decay=0.0,
      grad_clip_norm=1.0,
      alpha_l1=0.2,
      beta_ssim=0.1,
      lambda_iqa=0.25 if arg.stage == 2 else 0.0,
      pixel_loss_max_t=1.0,  # pixel losses only for rows with t <= this
      timestep_shift=1.0,
      # Stage 1 trains the Med-IR (gen) expert alone: parameters matching this regex.
      stage1_trainable=r"(_moe_gen|vae2llm|llm2vae|time_embedder)",
      log_every=1,
      checkpoint_every=10,
      tensorboard=True,  # scalars to workdir/tensorboard
      profile_steps=(0, 0),  # (start, stop): jax.profiler trace of steps [start, stop)
      peak_tflops_per_device=0.0,  # > 0 adds MFU (e.g. 989 for H100 bf16 dense)
    )
  )
  # Starting weights (empty = fresh init). MedQ-UNI fine-tunes UniMedVL: point bagel_ema at its
  # ema.safetensors (scope=all) and flux_ae at ae.safetensors; or start BAGEL-style from a
  # transformers Qwen2 (gen expert = copy of und) and SigLIP. A missing/unexpected key or shape
  # mismatch stops the run naming every offending key.
  config.init = ml_collections.ConfigDict(dict(bagel_ema="", qwen2="", siglip="", flux_ae=""))

  # The data config (configs/data/medq_sample.py) at the VAE image size; the built-in real
  # images by default, a real dataset with --config.data.source / --config.data.paths.*.
  config.data = medq_sample.get_config(f"image_size={images.vae_image_size}")
  config.data.data_dir = f"runs/data/{arg.size}"
  config.workdir = f"runs/medq_uni_{arg.size}_stage{arg.stage}"
  return config
