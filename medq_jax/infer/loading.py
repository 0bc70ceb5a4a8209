"""Everything inference needs from disk, from either kind of source:

a medq-train run (a stage directory with checkpoints/, or a pipeline directory holding
stage1/ and stage2/: the last trained stage is used), params restored by Orbax on any mesh
in fp32 or bf16; the VAE from config.init.flux_ae or the pipeline's stage-0 vae/;
a converted BAGEL/UniMedVL/MedQ-Uni directory: ema.safetensors (BAGEL names; sharded files
with an index also work), ae.safetensors and the tokenizer files.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medq_jax import checkpoints
from medq_jax.convert import bagel, core
from medq_jax.models.medq_uni import abstract_params
from medq_jax.tokenizer import load_tokenizer

EMA_NAMES = ("ema.safetensors", "ema.safetensors.index.json", "model.safetensors")


@dataclasses.dataclass
class LoadedModel:
  params: Any
  vae_params: Any
  tokenizer: Any
  source: str  # what was loaded, for reports
  step: int | None  # training step (None for converted weights)
  vae_path: str


def _ema_file(directory: str) -> str | None:
  for name in EMA_NAMES:
    if os.path.isfile(os.path.join(directory, name)):
      return os.path.join(directory, name)
  return None


def run_directory(workdir: str) -> str:
  """The medq-train run to load from `workdir`: itself when it has checkpoints, else the last
  stage of a pipeline directory that has them (stage2, then stage1)."""
  if os.path.isdir(checkpoints.checkpoint_dir(workdir)):
    return workdir
  for stage in ("stage2", "stage1"):
    candidate = os.path.join(workdir, stage)
    if os.path.isdir(checkpoints.checkpoint_dir(candidate)):
      return candidate
  raise checkpoints.CheckpointError(
    f"{workdir}: no checkpoints/ here nor in stage2/ or stage1/ (a medq-train run or pipeline "
    f"directory), and no {EMA_NAMES[0]} (a converted directory)"
  )


def _pipeline_root(run_dir: str) -> str:
  name = os.path.basename(os.path.normpath(run_dir))
  return os.path.dirname(os.path.normpath(run_dir)) if name in ("stage1", "stage2") else run_dir


def load_converted(directory: str, config, dtype: str | None = None) -> LoadedModel:
  """A converted BAGEL-named directory (ema.safetensors + ae.safetensors + tokenizer)."""
  ema = _ema_file(directory)
  ae = os.path.join(directory, checkpoints.VAE_FILE)
  if ema is None:
    raise FileNotFoundError(f"{directory}: none of {EMA_NAMES} (BAGEL-named weights)")
  shapes = jax.tree_util.tree_map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
    nn.unbox(abstract_params(config.model)),
  )
  try:
    params = core.load_params(
      shapes,
      core.iter_safetensors(ema),
      bagel.bagel_rules(config.model),
      ignore=bagel.BAGEL_IGNORE + bagel.siglip_ignore_patterns(bagel.BAGEL_PREFIX),
    )
  except core.ConversionError as error:
    raise checkpoints.CheckpointError(
      f"{ema}: does not fit config.model (size {config.model.size}, expert_scope "
      f"{config.model.expert_scope}): {error}"
    ) from None
  cast = jnp.dtype(dtype) if dtype else None
  params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, cast or x.dtype), params)
  vae_params = checkpoints.load_vae_params(ae, config.model)
  return LoadedModel(params, vae_params, load_tokenizer(directory), directory, None, ae)


def load_for_inference(config, source: str, dtype: str | None = None, mesh=None) -> LoadedModel:
  """Params, VAE and tokenizer from a run/pipeline directory or a converted directory."""
  if not os.path.isdir(source):
    raise FileNotFoundError(f"{source}: no such directory (a run, pipeline or converted dir)")
  if _ema_file(source) and not glob.glob(os.path.join(source, "**", "checkpoints"), recursive=True):
    return load_converted(source, config, dtype)
  run_dir = run_directory(source)
  params, step = checkpoints.restore_params(
    run_dir,
    config.model,
    mesh=mesh,
    rules=config.sharding_rules if mesh else None,
    dtype=dtype,
    prefer_ema=True,  # a run trained with train.ema_decay > 0 is evaluated with its EMA
  )
  vae_path = checkpoints.vae_file(config.init.flux_ae, config.model.size, _pipeline_root(run_dir))
  vae_params = checkpoints.load_vae_params(vae_path, config.model)
  tokenizer = load_tokenizer(checkpoints.run_tokenizer_dir(run_dir, config.layout))
  return LoadedModel(params, vae_params, tokenizer, run_dir, step, vae_path)
