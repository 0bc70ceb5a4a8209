"""Writing and resuming Orbax checkpoints of the train state together with the Grain iterator
state, so that a restored run continues with exactly the batches it would have seen. Reading a
run's parameters alone (evaluation) is `medq_jax.checkpoints`.

Each saved step also gets the fingerprints of its arrays (`checkpoints.write_checksums`). On
resume the latest step that reads and matches them is used; a newer step that does not is
reported (step and file or array) and moved to `<workdir>/corrupt_checkpoints/<step>`, so the
run can save that step again; when no step is usable the run stops with one error. On several
processes they all agree on each step (`checkpoints.restore_agreed`): a read that fails on one
process only is reported by all, and all fall back together."""

from __future__ import annotations

import logging
import os

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from medq_jax import checkpoints

CORRUPT_SUBDIR = "corrupt_checkpoints"


def make_manager(directory: str, keep: int = 3, save_every: int = 100) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, save_interval_steps=save_every, enable_async_checkpointing=True
  )
  # The item handlers hold a failed read for `checkpoints.restore_agreed` (every process then
  # takes the same decision on the step).
  handlers = {
    checkpoints.STATE_ITEM: checkpoints.holding_failed_reads(ocp.StandardCheckpointHandler()),
    checkpoints.DATA_ITEM: checkpoints.holding_failed_reads(grain.checkpoint.CheckpointHandler()),
  }
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_handlers=handlers)


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator, force: bool = False):
  """Saves (async) the sharded state and the data iterator position at `step`, with the
  fingerprints of the state's arrays (written first: a step never exists without them)."""
  if not (force or manager.should_save(step)):
    return False
  checkpoints.write_checksums(str(manager.directory), step, state)
  saved = manager.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)
    ),
    force=force,
  )
  checkpoints.prune_checksums(str(manager.directory), set(manager.all_steps()) | {step})
  return saved


def _set_aside(manager: ocp.CheckpointManager, step: int) -> None:
  """Moves a corrupt step out of the checkpoint directory (kept for inspection)."""
  directory = str(manager.directory)
  if jax.process_index() == 0:
    target = os.path.join(os.path.dirname(directory), CORRUPT_SUBDIR, str(step))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.exists(target):
      target += f".{len(os.listdir(os.path.dirname(target)))}"
    os.rename(os.path.join(directory, str(step)), target)
    logging.warning("moved the unusable checkpoint step %d to %s", step, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"medq_set_aside_{step}")
  manager.reload()


def restore_latest(manager: ocp.CheckpointManager, abstract_state, data_iterator):
  """Restores the latest good step into `abstract_state`'s shardings (any mesh) and rewinds
  `data_iterator` to it. Returns (state, step) or (None, 0) when there is no checkpoint;
  CheckpointError when there are steps and none is usable."""
  directory = str(manager.directory)
  problems = []
  checkpoints.absorb_abandoned_reads()
  for step in checkpoints.agreed_steps(directory):
    try:
      restored = checkpoints.restore_agreed(
        manager,
        step,
        ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data=grain.checkpoint.CheckpointRestore(data_iterator),
        ),
      )
      checkpoints.verify_checksums(directory, step, restored.state)
    except Exception as error:  # any unreadable or altered step: report it, try the previous
      problems.append(checkpoints.describe_failure(directory, step, error))
      logging.error("%s; resuming from the previous step instead", problems[-1])
      continue
    for bad in [s for s in manager.all_steps() if s > step]:
      _set_aside(manager, bad)
    return restored.state, step
  if problems:
    raise checkpoints.CheckpointError(
      f"{directory}: no usable checkpoint to resume from: " + "; ".join(problems)
    )
  return None, 0


def abstract_like(tree):
  """ShapeDtypeStructs with the shardings of `tree` (restore target on the same mesh)."""
  return jax.tree_util.tree_map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
  )
