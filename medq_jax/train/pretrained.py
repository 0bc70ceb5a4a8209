"""Starting weights for training from `config.init`: a BAGEL/UniMedVL/MedQ-Uni `ema.safetensors`,
or transformers Qwen2 + SigLIP checkpoints, and a FLUX `ae.safetensors` for the frozen VAE.

Checkpoint tensors stream into host arrays, which are placed straight into the parameters'
shardings; parameters no checkpoint provides keep their fresh initialisation.
"""

from __future__ import annotations

import logging
from typing import Any

import jax

from medq_jax.convert import bagel, core
from medq_jax.convert.flux_vae import flux_vae_rules


def _shapes(tree: Any) -> Any:
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _place(tree: Any, loaded: dict[str, Any]) -> Any:
  """Replaces the leaves named in `loaded` by device arrays with the old leaves' shardings."""
  flat = core.flatten(tree)
  for path, value in loaded.items():
    leaf = flat[path]
    flat[path] = jax.device_put(value.astype(leaf.dtype), leaf.sharding)
  return core.unflatten(flat)


def load_initial_weights(init_config, model_config, params: Any, vae_params: Any):
  """Returns (params, vae_params) with whatever `init_config` names loaded into them.

  init_config fields (empty = not used): bagel_ema (file, dir or index.json), qwen2, siglip
  (transformers checkpoint dirs/files; ignored when bagel_ema is set), flux_ae.
  """
  loaded: dict[str, Any] = {}
  if init_config.bagel_ema:
    logging.info("initialising MedQUni from %s", init_config.bagel_ema)
    loaded = core.flatten(
      core.load_params(
        _shapes(params),
        core.iter_safetensors(init_config.bagel_ema),
        bagel.bagel_rules(model_config),
        ignore=bagel.BAGEL_IGNORE + bagel.siglip_ignore_patterns(bagel.BAGEL_PREFIX),
      )
    )
  elif init_config.qwen2 or init_config.siglip:
    logging.info("initialising from qwen2=%r siglip=%r", init_config.qwen2, init_config.siglip)
    loaded = bagel.load_pretrained_parts(
      model_config, _shapes(params), init_config.qwen2 or None, init_config.siglip or None
    )
  params = _place(params, loaded)
  if init_config.flux_ae:
    logging.info("loading the frozen VAE from %s", init_config.flux_ae)
    vae_loaded = core.flatten(
      core.load_params(
        _shapes(vae_params), core.iter_safetensors(init_config.flux_ae), flux_vae_rules()
      )
    )
    vae_params = _place(vae_params, vae_loaded)
  return params, vae_params
