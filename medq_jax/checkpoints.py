"""Reading checkpoints: the one module that train, infer, bench (and the engine) use to find a run's
checkpoints and restore its parameters.

A `medq-train` workdir holds Orbax steps under `checkpoints/<step>/` with two items: `state` (the
`TrainState`: step, params, opt_state) and `data` (the Grain iterator position). Evaluation
restores `state.params` alone (Orbax partial restore): no optimizer is built and no optimizer
state is read, the parameters land in any mesh's shardings, in fp32 or bf16.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from medq_jax import sharding as sharding_lib
from medq_jax.convert.core import flatten
from medq_jax.models.medq_uni import abstract_params

CHECKPOINTS_SUBDIR = "checkpoints"
TOKENIZER_SUBDIR = (
  "tokenizer"  # the BPE a run trained for itself (when layout.tokenizer_dir is empty)
)
STATE_ITEM = "state"  # the TrainState pytree
DATA_ITEM = "data"  # the Grain iterator state
ITEM_NAMES = (STATE_ITEM, DATA_ITEM)


class CheckpointError(ValueError):
  """A checkpoint is missing or does not fit the config; the message names the path and why."""


def checkpoint_dir(workdir: str) -> str:
  """The Orbax directory of a training run's workdir (absolute)."""
  return os.path.join(os.path.abspath(workdir), CHECKPOINTS_SUBDIR)


def run_tokenizer_dir(workdir: str, layout_config) -> str:
  """The tokenizer a run uses: `layout.tokenizer_dir` when given, else the one it trained under
  `workdir/tokenizer`."""
  return layout_config.tokenizer_dir or os.path.join(workdir, TOKENIZER_SUBDIR)


def open_manager(directory: str) -> ocp.CheckpointManager:
  """A read-only view of the steps in `directory` (a `checkpoint_dir`)."""
  if not os.path.isdir(directory):
    raise CheckpointError(
      f"{directory}: no such checkpoint directory (expected "
      f"<workdir>/{CHECKPOINTS_SUBDIR} of a medq-train run)"
    )
  options = ocp.CheckpointManagerOptions(read_only=True, create=False)
  # Only the state item is read; a PyTree handler reads its metadata and partial restores.
  return ocp.CheckpointManager(
    directory, options=options, item_handlers={STATE_ITEM: ocp.PyTreeCheckpointHandler()}
  )


def _check_shapes(saved: Any, abstract: Any, where: str) -> None:
  """One error listing every parameter missing, unexpected or of another shape."""
  saved_flat, wanted_flat = flatten(saved), flatten(abstract)
  problems = [f"missing {name}" for name in sorted(set(wanted_flat) - set(saved_flat))]
  problems += [f"unexpected {name}" for name in sorted(set(saved_flat) - set(wanted_flat))]
  problems += [
    f"{name}: checkpoint {tuple(saved_flat[name].shape)} vs config {tuple(wanted_flat[name].shape)}"
    for name in sorted(set(saved_flat) & set(wanted_flat))
    if tuple(saved_flat[name].shape) != tuple(wanted_flat[name].shape)
  ]
  if problems:
    shown = "; ".join(problems[:8]) + (
      f"; ... {len(problems) - 8} more" if len(problems) > 8 else ""
    )
    raise CheckpointError(
      f"{where}: the checkpoint does not fit config.model "
      f"({len(problems)} parameter problems; another size or expert scope?): "
      f"{shown}"
    )


def restore_params(
  workdir: str,
  model_config,
  *,
  step: int | None = None,
  mesh=None,
  rules=None,
  dtype: str | None = None,
) -> tuple[Any, int]:
  """Restores the MedQUni parameters of a training run; returns (params, step).

  workdir: a medq-train workdir; step: None for the latest. With `mesh` and `rules` the
  parameters are placed into the mesh's shardings from their logical names (any device count);
  otherwise on the default device. dtype: None keeps the saved dtype, or e.g. "bfloat16".
  """
  directory = checkpoint_dir(workdir)
  manager = open_manager(directory)
  try:
    step = manager.latest_step() if step is None else int(step)
    if step is None:
      raise CheckpointError(f"{directory}: no checkpoint steps found")
    if step not in manager.all_steps():
      raise CheckpointError(f"{directory}: no step {step}; steps: {list(manager.all_steps())}")
    boxed = abstract_params(model_config)
    abstract = nn.unbox(boxed)
    saved = manager.item_metadata(step)[STATE_ITEM]
    saved_params = dict(getattr(saved, "tree", saved))["params"]
    _check_shapes(saved_params, abstract, f"{directory}/{step}")
    if mesh is not None:
      shardings = sharding_lib.mesh_shardings(boxed, mesh, rules)
    else:
      device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      shardings = jax.tree_util.tree_map(lambda _: device, abstract)
    cast = jnp.dtype(dtype) if dtype else None
    restore_args = jax.tree_util.tree_map(
      lambda leaf, sharding: ocp.ArrayRestoreArgs(dtype=cast or leaf.dtype, sharding=sharding),
      abstract,
      shardings,
    )
    target = {
      "params": jax.tree_util.tree_map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(
          leaf.shape, cast or leaf.dtype, sharding=sharding
        ),
        abstract,
        shardings,
      )
    }
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        **{
          STATE_ITEM: ocp.args.PyTreeRestore(
            item=target, restore_args={"params": restore_args}, partial_restore=True
          )
        }
      ),
    )
    return restored[STATE_ITEM]["params"], step
  finally:
    manager.close()


# ------------------------------------------------------------------------------ the frozen VAE

BUILTIN_VAE = "builtin"  # config.init.flux_ae value: the VAE shipped for the model size
VAE_FILE = "ae.safetensors"


def vae_file(flux_ae: str, model_size: str, pipeline_dir: str = "") -> str:
  """The frozen VAE's file for a run: `config.init.flux_ae` (a path, or "builtin": the one
  shipped for tiny/small, `medq_jax.assets`), else the stage-0 VAE a pipeline trained into
  <pipeline_dir>/vae/ae.safetensors. Raises FileNotFoundError saying what was looked for."""
  if flux_ae == BUILTIN_VAE:
    from medq_jax import assets

    return assets.builtin_vae_path(model_size)
  if flux_ae:
    if not os.path.isfile(flux_ae):
      raise FileNotFoundError(f"init.flux_ae={flux_ae}: no such file (an ae.safetensors)")
    return flux_ae
  trained = os.path.join(pipeline_dir, "vae", VAE_FILE) if pipeline_dir else ""
  if trained and os.path.isfile(trained):
    return trained
  raise FileNotFoundError(
    "no VAE: set init.flux_ae to an ae.safetensors or to 'builtin' (tiny/small), or point at a "
    f"pipeline directory whose stage 0 wrote vae/{VAE_FILE}"
    + (f" (looked for {trained})" if trained else "")
  )


def load_vae_params(path: str, model_config, dtype: str | None = None) -> Any:
  """FluxAutoEncoder params of `model_config.vae` from a FLUX-named ae.safetensors (FLUX's,
  BAGEL's, UniMedVL's, or one our stage 0 wrote). Errors name the file and every missing,
  unexpected or mis-shaped tensor."""
  from medq_jax.convert import core
  from medq_jax.convert.flux_vae import flux_vae_rules
  from medq_jax.models.vae import FluxAutoEncoder

  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such VAE file (an ae.safetensors)")
  vae = FluxAutoEncoder(model_config.vae)
  side = 8 * 2 ** (len(model_config.vae.ch_mult) - 1)
  image = jnp.zeros((1, side, side, model_config.vae.in_channels), jnp.float32)
  shapes = jax.eval_shape(lambda: nn.unbox(vae.init(jax.random.key(0), image)["params"]))
  try:
    params = core.load_params(shapes, core.iter_safetensors(path), flux_vae_rules())
  except core.ConversionError as error:
    raise CheckpointError(
      f"{path}: does not fit the FLUX autoencoder of model.vae (ch={model_config.vae.ch}, "
      f"ch_mult={tuple(model_config.vae.ch_mult)}): {error}"
    ) from None
  cast = jnp.dtype(dtype) if dtype else None
  return jax.tree_util.tree_map(lambda x: jnp.asarray(x, cast or x.dtype), params)
