"""Data files that ship inside the package: the stage-0 VAE weights of the CPU model sizes.

`medq_jax/assets/vae/<size>.safetensors` (FLUX `ae.safetensors` naming, float32) and
`<size>.json` (the stage-0 log: command, config, loss curve, val PSNR/SSIM); docs/vae.md.
"""

from __future__ import annotations

import importlib.resources

VAE_SIZES = ("tiny", "small")


def builtin_vae_path(size: str) -> str:
  """Path of the shipped VAE weights of model size `size` (load with config.init.flux_ae or
  medq_jax.train.vae_stage.load_vae_params). ValueError when none ships for that size."""
  if size not in VAE_SIZES:
    raise ValueError(
      f"model size {size!r}: no built-in VAE ships for it (built-in: {list(VAE_SIZES)}); "
      "point config.init.flux_ae at a FLUX/BAGEL ae.safetensors instead"
    )
  resource = importlib.resources.files(__name__) / "vae" / f"{size}.safetensors"
  if not resource.is_file():
    raise FileNotFoundError(
      f"{resource}: the built-in {size} VAE is missing from this installation (package data "
      "medq_jax/assets/vae/*.safetensors; reinstall, or train it: docs/vae.md)"
    )
  return str(resource)


def builtin_vae_log_path(size: str) -> str:
  """Path of the stage-0 log (JSON) next to `builtin_vae_path(size)`."""
  return builtin_vae_path(size)[: -len(".safetensors")] + ".json"
