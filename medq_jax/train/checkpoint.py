"""Writing and resuming Orbax checkpoints of the train state together with the Grain iterator
state, so that a restored run continues with exactly the batches it would have seen. Reading a
run's parameters alone (evaluation) is `medq_jax.checkpoints`."""

from __future__ import annotations

import os

import grain
import jax
import orbax.checkpoint as ocp

from medq_jax import checkpoints


def make_manager(directory: str, keep: int = 3, save_every: int = 100) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, save_interval_steps=save_every, enable_async_checkpointing=True
  )
  return ocp.CheckpointManager(
    os.path.abspath(directory), options=options, item_names=checkpoints.ITEM_NAMES
  )


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator, force: bool = False):
  """Saves (async) the sharded state and the data iterator position at `step`."""
  return manager.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)
    ),
    force=force,
  )


def restore_latest(manager: ocp.CheckpointManager, abstract_state, data_iterator):
  """Restores into `abstract_state`'s shardings (any mesh) and rewinds `data_iterator`.

  Returns (state, step) or (None, 0) when there is no checkpoint.
  """
  step = manager.latest_step()
  if step is None:
    return None, 0
  restored = manager.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.checkpoint.CheckpointRestore(data_iterator),
    ),
  )
  return restored.state, step


def abstract_like(tree):
  """ShapeDtypeStructs with the shardings of `tree` (restore target on the same mesh)."""
  return jax.tree_util.tree_map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
  )
