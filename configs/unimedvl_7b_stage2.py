"""UniMedVL-7B stage 2 (joint Med-IQA + Med-IR, every parameter trains) on 8x A100 80 GB, FSDP.

  medq-train --config=configs/unimedvl_7b_stage2.py --workdir=runs/7b_stage2 \
      --config.init.from_checkpoint=runs/7b_stage1 \
      --config.init.flux_ae=/ckpt/UniMedVL/ae.safetensors

The stage-1 config (configs/unimedvl_7b_stage1.py: mesh, bf16 over fp32 masters, full remat, one
example per GPU, 10K steps) at stage 2. Budget: docs/scale.md. Options: as stage 1's.
"""

from __future__ import annotations

from configs import unimedvl_7b_stage1


def get_config(arg: str | None = None):
  return unimedvl_7b_stage1.get_config(arg, stage=2)
