"""Stage 0: train the autoencoder of a model size (the CPU sizes' shipped VAE weights).

Usage:
  python -m launch.train_vae --config=configs/vae_stage0.py:size=small --workdir=runs/vae_small
  python -m launch.train_vae --config=configs/vae_stage0.py:size=tiny --config.vae_train.steps=50

Options of the config arg: size (tiny|small; base/unimedvl_7b load FLUX's ae.safetensors instead).
`config.model` and `config.data` are those of `configs/medq_uni.py` at that size (the same VAE
layout and the same precomputed data); `config.vae_train` is stage 0's own section (docs/vae.md).
"""

from __future__ import annotations

import ml_collections

from configs import common, medq_uni

# Steps of the shipped runs (docs/vae.md: 3.8 min for tiny, 28 min for small on 2 shared cores).
_STEPS = {"tiny": 1500, "small": 2500}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, size="small")
  base = medq_uni.get_config(f"size={arg.size}")
  config = ml_collections.ConfigDict()
  config.model = base.model
  config.data = base.data
  config.vae_train = ml_collections.ConfigDict(
    dict(
      steps=_STEPS.get(arg.size, 1000),
      batch_size=8,  # examples per step; each gives two images (`high` and `low`)
      seed=0,  # initialisation, posterior samples, flips
      zero_init_residual=True,  # residual branches start at zero (each block the identity)
      learning_rate=2e-3,  # peak of warmup + cosine decay (optax adam)
      warmup_steps=100,
      end_learning_rate_fraction=0.05,
      grad_clip_norm=1.0,
      l1_weight=1.0,  # L1 on the RGB reconstruction in [0, 1] units
      ssim_weight=1.0,  # 1 - SSIM on the grey image (11x11 Gaussian window, sigma 1.5)
      kl_weight=1e-6,  # KL(posterior || N(0, 1)), summed over latent entries, mean over images
      crop_size=32,  # > 0: train on random crops of this side (convolutional; cheaper steps)
      flip_augment=True,  # random horizontal/vertical flips and transposes (the 8 symmetries)
      intensity_augment=False,  # random gamma in [1/max_gamma, max_gamma], inversion
      max_gamma=2.0,
      synthetic_fraction=0.0,  # of each batch replaced by random multi-scale textures
      log_every=50,  # train loss / PSNR into the log's curve
      eval_every=500,  # val PSNR/SSIM into the log's curve (and at the end)
      eval_split="val",
      eval_batch_size=32,
    )
  )
  config.workdir = f"runs/vae_{arg.size}"
  return config
