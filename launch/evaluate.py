"""Restoration evaluation (`medq-evaluate`): restores a trained run (or a converted
BAGEL/UniMedVL/MedQ-Uni directory), runs assess-then-restore on a held-out split and writes the
report (Table-1 tables with the identity, classical and VAE-ceiling baselines, CSV, JSON, panels,
description scores). Thin: parse flags, call the library.

  medq-evaluate --config=configs/medq_uni.py:size=small --workdir=runs/main
  medq-evaluate --config=configs/medq_uni.py:size=unimedvl_7b,scope=all \
      --converted=/ckpt/MedQ-Uni --config.evaluate.dtype=bfloat16
"""

from __future__ import annotations

import logging

from absl import flags

from launch import cli, distributed

_CONFIG = cli.define_config_file("config", "configs/medq_uni.py", "Config file.")
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "A medq-train run or pipeline directory (default: config.workdir)."
)
_CONVERTED = flags.DEFINE_string(
  "converted", None, "A converted directory (ema.safetensors, ae.safetensors, tokenizer)."
)
_OUT = flags.DEFINE_string("out", None, "Report directory (default: <source>/evaluation/<split>).")
flags.adopt_module_key_flags(distributed)


def main(argv):
  del argv
  distributed.initialize()
  logging.getLogger().setLevel(logging.INFO)
  config = _CONFIG.value
  source = _CONVERTED.value or _WORKDIR.value or config.workdir
  from launch.restoration_eval import run_evaluation

  paths = run_evaluation(config, source, _OUT.value)
  for name, path in paths.items():
    print(f"{name}: {path}")


def run_main():
  cli.run(main)


if __name__ == "__main__":
  run_main()
