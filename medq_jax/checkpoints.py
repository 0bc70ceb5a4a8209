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
