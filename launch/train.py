"""Trains MedQ-UNI from a config (main job). Thin: parse flags, set up distributed, call the
library.

  medq-train --config=configs/medq_uni.py:size=tiny,stage=1 --workdir=runs/tiny
  medq-train --config=configs/medq_uni.py:size=small,stage=2 --config.train.steps=200

Multi-host: pass --coordinator=HOST:PORT --num_processes=N --process_id=I (or nothing on TPU
pods / SLURM, where jax.distributed discovers them).
"""

import logging

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/medq_uni.py", "Config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: config.workdir).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


class _QuietLibraries(logging.Filter):
  """Drops INFO chatter of Orbax/TensorStore (every async save logs a dozen lines)."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  del argv
  import jax
  for handler in logging.getLogger().handlers:
    handler.addFilter(_QuietLibraries())
  if _DISTRIBUTED.value or _COORDINATOR.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  logging.getLogger().setLevel(logging.INFO)
  config = _CONFIG.value
  metrics = run_training(config, _WORKDIR.value or config.workdir)
  print("final:", " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))


def run_training(config, workdir: str) -> dict:
  """The main job after flags: prepare the dataset and tokenizer (process 0; the others wait),
  then train. Returns the last step's metrics."""
  from launch import prepare
  from medq_jax.train.loop import train
  tokenizer_dir = prepare.prepare_training(config, workdir)
  return train(config, workdir, tokenizer_dir)


def run_main():
  app.run(main)


if __name__ == "__main__":
  run_main()
