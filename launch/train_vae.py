"""Stage 0: trains the autoencoder of a model size (thin: flags, dataset, then the library).

  python -m launch.train_vae --config=configs/vae_stage0.py:size=small --workdir=runs/vae_small
  python -m launch.train_vae --config=configs/vae_stage0.py:size=tiny --ship

Writes <workdir>/vae/ae.safetensors (FLUX names) and vae_log.json; a rerun with the same config
returns them untouched. --ship copies both into the package (medq_jax/assets/vae/<size>.*), the
built-in VAE of that size. docs/vae.md.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys

from absl import flags

from launch import cli, jobs

_CONFIG = cli.define_config_file("config", "configs/vae_stage0.py", "Config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: config.workdir).")
_SHIP = flags.DEFINE_bool(
  "ship", False, "Copy the weights and log into medq_jax/assets/vae/<size>.{safetensors,json}."
)


def command_line(argv: list[str]) -> str:
  """The command as it was typed, for the log (`python -m launch.train_vae` or the script)."""
  program = os.path.basename(argv[0])
  program = "python -m launch.train_vae" if program.endswith(".py") else program
  return " ".join([program] + [shlex.quote(arg) for arg in argv[1:]])


def ship(result: dict, size: str) -> list[str]:
  """Copies a stage-0 result into the package data as the built-in VAE of `size`."""
  from medq_jax import assets

  if size not in assets.VAE_SIZES:
    raise ValueError(f"--ship: the package ships VAEs for {list(assets.VAE_SIZES)}, not {size!r}")
  directory = os.path.join(os.path.dirname(assets.__file__), "vae")
  os.makedirs(directory, exist_ok=True)
  targets = [
    os.path.join(directory, f"{size}.safetensors"),
    os.path.join(directory, f"{size}.json"),
  ]
  for source, target in zip((result["path"], result["log_path"]), targets):
    shutil.copyfile(source, target)
  return targets


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  config = _CONFIG.value
  result = jobs.run_vae_stage(config, _WORKDIR.value or config.workdir, command_line(sys.argv))
  if _SHIP.value:
    for path in ship(result, config.model.size):
      logging.info("shipped %s", path)
  print(
    f"VAE {result['path']}: val PSNR {result['psnr_mean']:.2f} +- {result['psnr_std']:.2f} dB, "
    f"SSIM {result['ssim_mean']:.4f} +- {result['ssim_std']:.4f} (n={result['n']})"
  )


def run_main():
  cli.run(main)


if __name__ == "__main__":
  run_main()
