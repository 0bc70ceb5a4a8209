"""Trains MedQ-UNI from a config (main job). Thin: parse flags, set up distributed, call the
library.

  medq-train --config=configs/medq_uni.py:size=tiny,stage=1 --workdir=runs/tiny
  medq-train --config=configs/medq_uni.py:size=small,stage=2 --config.train.steps=200

The stage pipeline (docs/training.md): stages 0 (VAE), 1 and 2 in order, each resumable (rerun
the same command after a kill), each in <workdir>/vae, <workdir>/stage1, <workdir>/stage2:

  medq-train --config=configs/medq_uni.py:size=tiny,stages=0-1-2 --workdir=runs/tiny \
      --config.pipeline.stage1_steps=200 --config.pipeline.stage2_steps=200

Multi-host: --coordinator=HOST:PORT --num_processes=N --process_id=I on every process, or
--distributed alone on SLURM / TPU pods / Kubernetes, where JAX reads them from the environment
(launch/distributed.py, docs/cli.md).
"""

import logging
import sys

from absl import flags

from launch import cli, distributed, jobs

_CONFIG = cli.define_config_file("config", "configs/medq_uni.py", "Config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: config.workdir).")
flags.adopt_module_key_flags(distributed)


class _QuietLibraries(logging.Filter):
  """Drops INFO chatter of Orbax/TensorStore (every async save logs a dozen lines)."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  del argv
  distributed.initialize()
  for handler in logging.getLogger().handlers:
    handler.addFilter(_QuietLibraries())
  logging.getLogger().setLevel(logging.INFO)
  config = _CONFIG.value
  from medq_jax.train.loop import STOP_ERRORS

  try:
    metrics = jobs.run_training(config, _WORKDIR.value or config.workdir)
  except STOP_ERRORS as error:  # config, checkpoint, NaN and data faults: one line, no traceback
    sys.stderr.write(f"FATAL medq-train: {error}\n")
    sys.exit(1)
  print("final:", " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))


def run_main():
  cli.run(main)


if __name__ == "__main__":
  run_main()
