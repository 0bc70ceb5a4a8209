"""MedQ-UNI training config (big_vision style).

Usage:
  medq-train --config=configs/medq_uni.py:size=tiny,stage=1
  medq-train --config=configs/medq_uni.py:size=small,stage=2,scope=all --config.train.steps=50
  medq-train --config=configs/medq_uni.py:size=tiny,stages=0-1-2 --workdir=runs/tiny \
      --config.pipeline.stage1_steps=200 --config.pipeline.stage2_steps=200

Options of the config arg: size (tiny|small|base|unimedvl_7b), stage (1|2), scope (ffn|all),
mesh (data,fsdp,tensor sizes, e.g. "1x-1x1"), stages (a pipeline: the stages to run in order,
joined by "-", from 0 = train the VAE, 1 = restoration pre-training, 2 = joint IQA + IR; e.g.
"0-1-2", "1-2", "2"; empty = the single stage `stage`).

A pipeline (`config.pipeline.stages`, docs/training.md) runs its stages in order in one command,
each in its own directory (`<workdir>/vae`, `<workdir>/stage1`, `<workdir>/stage2`), each
resumable; stage k trains `pipeline.stage{k}_steps` steps (stage 0's, the same value as
`vae_train.steps`, exist when the stages include 0); stage 2 starts from stage 1's final parameters
(`init.from_checkpoint`). Stage 0 trains the VAE unless `init.flux_ae` names one: a file, or
"builtin" (the VAE shipped for tiny/small, medq_jax/assets).

Condition dropout (`train.dropout_*`, classifier-free guidance): the defaults are BAGEL's for a
model trained from scratch (text 0.1, ViT 0.3, VAE 0.1); MedQ-Uni fine-tuned UniMedVL with all
three at 0: set them to 0 when starting from `init.bagel_ema`.
"""

from __future__ import annotations

import ml_collections

from configs import common, inference, model_sizes
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
  arg = common.parse_arg(arg, size="tiny", stage=1, scope="ffn", mesh="1x-1x1", stages="")
  if arg.stage not in (1, 2):
    raise ValueError(f"config arg: stage must be 1 or 2, got {arg.stage}")
  stages = _parse_stages(arg.stages)
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
      # Packing (medq_jax/packing.py, docs/training.md): example slots per row (1: none) and
      # the und tokens of a packed row (0: pack_examples_per_row * max_und_len).
      pack_examples_per_row=1,
      pack_max_und_len=0,
      # Images of different sizes in one batch: 0 packs every example at vae_image_size; else
      # each at its own side (stride-aligned, clamped to [this, vae_image_size]; BAGEL's rule).
      vae_min_image_size=0,
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
      lambda_iqa=0.25,  # weight of the description's CE (stage 2; stage 1 has no description)
      pixel_loss_max_t=1.0,  # pixel losses only for rows with t <= this
      timestep_shift=1.0,
      sample_vae_posterior=True,  # encode with a posterior sample, as BAGEL trains (False: mean)
      # Condition dropout for classifier-free guidance (per example, BAGEL's data config): the
      # texts (instruction + description together), the ViT image, the clean VAE condition.
      # From scratch (BAGEL): 0.1 / 0.3 / 0.1; MedQ-Uni fine-tuning UniMedVL: all 0.
      dropout_text=0.1,
      dropout_vit=0.3,
      dropout_vae=0.1,
      # Stage 1 trains the Med-IR (gen) expert alone: parameters matching this regex.
      stage1_trainable=r"(_moe_gen|vae2llm|llm2vae|time_embedder|cond2llm)",
      log_every=1,
      checkpoint_every=10,
      tensorboard=True,  # scalars to workdir/tensorboard
      profile_steps=(0, 0),  # (start, stop): jax.profiler trace of steps [start, stop)
      peak_tflops_per_device=0.0,  # > 0 adds MFU (e.g. 989 for H100 bf16 dense)
      # Faults (docs/training.md "Faults"): a step whose loss, gradient norm or updated
      # parameters are not finite skips its update; this many in a row stop the run.
      max_consecutive_nonfinite=10,
      # Records that do not decode or examples that do not fit, in a row, before the run stops
      # naming the dataset and the first reasons (instead of waiting forever for a batch).
      max_consecutive_skips=1000,
      # The cosine schedule's horizon is fixed when a run starts (0: train.steps) and stored in
      # <workdir>/run.json; raising train.steps on resume keeps it unless this is True.
      schedule_steps=0,
      restretch_schedule=False,
      # > 0: keep an EMA of the parameters in the train state (ema = d * ema + (1 - d) * params
      # after each applied step), saved with it; evaluation loads it instead of the parameters.
      ema_decay=0.0,
      # Gradient accumulation (docs/training.md): the global batch_size is processed as this many
      # micro-batches inside one optimizer step (batch_size % (this x data-parallel size) == 0).
      grad_accum_steps=1,
      # Precision policy: "fp32", "bf16" (bf16 compute over fp32 master weights and optimizer
      # state; sets model.dtype / model.param_dtype), or "" (model.dtype/param_dtype as set).
      precision="",
      # Parameters frozen on top of the stage's rule: groups (vit, connector, embeddings,
      # lm_head, und, gen, vae) or regexes searched in parameter paths (medq_jax/train/freeze.py).
      freeze=(),
    )
  )
  # Starting weights (empty = fresh init). MedQ-UNI fine-tunes UniMedVL: point bagel_ema at its
  # ema.safetensors (scope=all) and flux_ae at ae.safetensors; or start BAGEL-style from a
  # transformers Qwen2 (gen expert = copy of und) and SigLIP. A missing/unexpected key or shape
  # mismatch stops the run naming every offending key. flux_ae="builtin": the VAE shipped for
  # tiny/small. from_checkpoint: a medq-train run directory whose latest checkpoint's parameters
  # start this run (fresh optimizer; how stage 2 starts from stage 1).
  config.init = ml_collections.ConfigDict(
    dict(bagel_ema="", qwen2="", siglip="", flux_ae="", from_checkpoint="")
  )

  # The stage pipeline (empty stages: the single stage train.stage). Paper: 10K steps per stage.
  config.pipeline = ml_collections.ConfigDict(
    dict(
      stages="-".join(str(s) for s in stages),
      stage1_steps=config.train.steps,
      stage2_steps=config.train.steps,
    )
  )
  if 0 in stages:
    # Stage 0's own section (configs/vae_stage0.py, docs/vae.md): the VAE's training recipe;
    # pipeline.stage0_steps is the same value as vae_train.steps (setting either sets both).
    config.vae_train = _vae_stage_config(arg.size)
    config.pipeline.stage0_steps = config.vae_train.get_ref("steps")

  # Inference (assess-then-restore: MedQ-Uni's defaults, configs/inference.py, docs/inference.md)
  # and restoration evaluation (medq-evaluate; after_training: medq-train evaluates the final
  # checkpoint of a pipeline and writes the report, docs/evaluation.md).
  config.infer = inference.infer_config(max_new_tokens=min(256, config.layout.max_und_len // 2))
  config.evaluate = inference.evaluate_config()
  config.evaluate.after_training = False

  # The data config (configs/data/medq_sample.py) at the VAE image size; the built-in real
  # images by default, a real dataset with --config.data.source / --config.data.paths.*.
  config.data = medq_sample.get_config(f"image_size={images.vae_image_size}")
  config.data.data_dir = f"runs/data/{arg.size}"
  config.workdir = f"runs/medq_uni_{arg.size}_" + (
    f"stages{config.pipeline.stages}" if stages else f"stage{arg.stage}"
  )
  return config


def _parse_stages(text: str) -> tuple[int, ...]:
  """ "0-1-2" -> (0, 1, 2): distinct stages from {0, 1, 2} in increasing order."""
  if not text:
    return ()
  try:
    stages = tuple(int(part) for part in text.split("-"))
  except ValueError:
    raise ValueError(
      f"config arg: stages expects stage numbers joined by '-' (e.g. 0-1-2), got {text!r}"
    ) from None
  if any(s not in (0, 1, 2) for s in stages) or list(stages) != sorted(set(stages)):
    raise ValueError(
      f"config arg: stages must be distinct stages from 0, 1, 2 in increasing order "
      f"(e.g. 0-1-2, 1-2), got {text!r}"
    )
  return stages


def _vae_stage_config(size: str) -> ml_collections.ConfigDict:
  """`vae_train` of configs/vae_stage0.py at `size` (imported here: that file imports this one
  and calls get_config without stages, so this does not recurse)."""
  from configs import vae_stage0

  return vae_stage0.get_config(f"size={size}").vae_train
