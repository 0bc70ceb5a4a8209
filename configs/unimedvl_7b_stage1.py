"""UniMedVL-7B (BAGEL-7B-MoT dimensions) stage 1 on one node of 8x A100 80 GB with FSDP.

  medq-train --config=configs/unimedvl_7b_stage1.py --workdir=runs/7b_stage1 \
      --config.init.bagel_ema=/ckpt/UniMedVL/ema.safetensors \
      --config.init.flux_ae=/ckpt/UniMedVL/ae.safetensors

configs/medq_uni.py's `size=unimedvl_7b,stage=1` with what a GPU node needs: the mesh (default
1x8x1: 8-way FSDP, parameters, gradients and AdamW moments split over the 8 GPUs), bf16 compute
over fp32 master weights, full rematerialisation of each decoder and ViT layer, one example per
GPU, the paper's 10K steps from 2e-5 and no condition dropout (MedQ-Uni fine-tunes UniMedVL).
The per-GPU memory budget is in docs/scale.md; `python -m launch.compile_check
--config=configs/unimedvl_7b_stage1.py --local_devices=8` checks it by compiling the step.

Options of the config arg: mesh (DATAxFSDPxTENSOR, default 1x8x1), scope (all|ffn: BAGEL's
MoT checkpoints are `all`), batch (global batch, default 8).
"""

from __future__ import annotations

from configs import common, medq_uni


def get_config(arg: str | None = None, stage: int = 1):
  arg = common.parse_arg(arg, mesh="1x8x1", scope="all", batch=8)
  config = medq_uni.get_config(f"size=unimedvl_7b,stage={stage},scope={arg.scope},mesh={arg.mesh}")
  config.model.dtype = "bfloat16"
  config.model.remat_policy = "full"
  config.train.batch_size = arg.batch
  config.train.steps = 10_000
  config.train.warmup_steps = 200
  config.train.checkpoint_every = 500
  config.train.log_every = 10
  config.train.peak_tflops_per_device = 312.0  # A100 bf16 dense
  config.train.dropout_text = config.train.dropout_vit = config.train.dropout_vae = 0.0
  config.pipeline.stage1_steps = config.pipeline.stage2_steps = config.train.steps
  config.workdir = f"runs/unimedvl_7b_stage{stage}"
  return config
