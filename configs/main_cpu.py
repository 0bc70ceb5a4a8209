"""The README's main job: the whole MedQ-UNI story on a 2-core CPU in under 15 minutes.

  medq-train --config=configs/main_cpu.py

Builds the built-in `medq-sample` data (64 px), runs stage 0 (the `small` size's pretrained
VAE shipped with the package, as MedQ-UNI uses a pretrained frozen FLUX VAE: loaded, and its
reconstruction ceiling reported), stage 1 (gen expert) and stage 2 (both experts, description
CE), restores the final checkpoint, runs assess-then-restore on the held-out `bench` split and
writes the restoration report (runs/main/stage2/evaluation/bench/report.md). Everything is an
ordinary `configs/medq_uni.py` setting, overridable on the command line.
"""

from __future__ import annotations

from configs import medq_uni


def get_config(arg: str | None = None):
  del arg
  config = medq_uni.get_config("size=small,stages=0-1-2")
  config.init.flux_ae = "builtin"
  config.pipeline.stage1_steps = 150
  config.pipeline.stage2_steps = 100
  config.train.checkpoint_every = 50
  config.train.log_every = 10
  config.evaluate.after_training = True
  config.evaluate.batch_size = 16
  config.workdir = "runs/main"
  return config
