"""Starting weights for training from `config.init`: a BAGEL/UniMedVL/MedQ-Uni `ema.safetensors`,
transformers Qwen2 + SigLIP checkpoints, or the parameters of an earlier medq-train run
(`from_checkpoint`: how stage 2 starts from stage 1), and a FLUX `ae.safetensors` for the frozen
VAE ("builtin": the VAE that ships for the tiny/small sizes).

Checkpoint tensors stream into host arrays, which are placed straight into the parameters'
shardings; parameters no checkpoint provides keep their fresh initialisation.
"""

from __future__ import annotations

import logging
from typing import Any

import jax

from medq_jax import checkpoints
from medq_jax.convert import bagel, core
from medq_jax.convert.flux_vae import flux_vae_rules
from medq_jax.convert.qwen2 import gen_twins


def _shapes(tree: Any) -> Any:
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _place(tree: Any, loaded: dict[str, Any]) -> Any:
  """Replaces the leaves named in `loaded` by device arrays with the old leaves' shardings."""
  flat = core.flatten(tree)
  for path, value in loaded.items():
    leaf = flat[path]
    flat[path] = jax.device_put(value.astype(leaf.dtype), leaf.sharding)
  return core.unflatten(flat)


def _copy_und_to_gen(params: Any) -> Any:
  """BAGEL's `init_moe` on placed parameters: every `*_moe_gen` leaf becomes a copy of its und
  twin, including twins no checkpoint provided (e.g. a fresh q_norm when a Qwen2 has none)."""
  flat = core.flatten(params)
  for und, gen in gen_twins(flat).items():
    flat[gen] = jax.device_put(flat[und], flat[gen].sharding, may_alias=False)
  return core.unflatten(flat)


def flux_ae_path(init_config, model_config) -> str:
  """The VAE file `init_config.flux_ae` names ("" when none, then the VAE keeps its fresh
  initialisation): a path, or "builtin" for the one shipped for `model_config.size`
  (`checkpoints.vae_file`; FileNotFoundError naming a missing file)."""
  if not init_config.flux_ae:
    return ""
  return checkpoints.vae_file(init_config.flux_ae, model_config.size)


def _restore_run_params(run_dir: str, model_config, mesh, rules) -> Any:
  """The parameters of the latest checkpoint of the medq-train run in `run_dir`."""
  try:
    params, step = checkpoints.restore_params(run_dir, model_config, mesh=mesh, rules=rules)
  except checkpoints.CheckpointError as error:
    raise checkpoints.CheckpointError(f"init.from_checkpoint={run_dir}: {error}") from None
  logging.info("initialising MedQUni from %s (step %d)", run_dir, step)
  return params


def load_initial_weights(
  init_config, model_config, params: Any, vae_params: Any, mesh=None, rules=None
):
  """Returns (params, vae_params) with whatever `init_config` names loaded into them.

  init_config fields (empty = not used): from_checkpoint (a medq-train run directory: its
  latest checkpoint's parameters, restored into `mesh`'s shardings by `rules`; excludes the
  others), bagel_ema (file, dir or index.json), qwen2, siglip (transformers checkpoint
  dirs/files; ignored when bagel_ema is set), flux_ae (a file or "builtin").
  """
  from_checkpoint = init_config.get("from_checkpoint", "")
  loaded: dict[str, Any] = {}
  if from_checkpoint:
    others = [k for k in ("bagel_ema", "qwen2", "siglip") if init_config.get(k)]
    if others:
      raise ValueError(
        f"init.from_checkpoint={from_checkpoint} starts from a run's parameters; "
        f"unset init.{', init.'.join(others)} (they would be overwritten)"
      )
    restored = _restore_run_params(from_checkpoint, model_config, mesh, rules)
    params = jax.tree_util.tree_map(
      lambda new, old: jax.device_put(new.astype(old.dtype), old.sharding), restored, params
    )
  elif init_config.bagel_ema:
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
  if not from_checkpoint and not init_config.bagel_ema and init_config.qwen2:
    params = _copy_und_to_gen(params)
  return params, load_frozen_vae(init_config, model_config, vae_params)


def load_frozen_vae(init_config, model_config, vae_params: Any) -> Any:
  """`vae_params` with the VAE file `init_config.flux_ae` names loaded into them (unchanged when
  it names none). The VAE is not part of the train state, so a resumed run loads it again."""
  flux_ae = flux_ae_path(init_config, model_config)
  if not flux_ae:
    return vae_params
  logging.info("loading the frozen VAE from %s", flux_ae)
  vae_loaded = core.flatten(
    core.load_params(_shapes(vae_params), core.iter_safetensors(flux_ae), flux_vae_rules())
  )
  return _place(vae_params, vae_loaded)
