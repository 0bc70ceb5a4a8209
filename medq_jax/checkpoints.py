"""Reading checkpoints: the one module that train, infer, bench (and the engine) use to find a run's
checkpoints and restore its parameters.

A `medq-train` workdir holds Orbax steps under `checkpoints/<step>/` with two items: `state` (the
`TrainState`: step, params, opt_state) and `data` (the Grain iterator position). Evaluation
restores `state.params` alone (Orbax partial restore): no optimizer is built and no optimizer
state is read, the parameters land in any mesh's shardings, in fp32 or bf16.

Every saved step has a fingerprint of each array (`fingerprints`: a position-weighted sum of the
array's bits, computed on the sharded arrays, so any single flipped bit changes it) in
`<workdir>/checkpoint_checksums/<step>.json`; a restore recomputes them and a step that does not
match, or does not read, is reported (step and file or array) and the previous step is used.

On several processes each reads its own shards, so a damaged file may fail one process's read
only. Every restore goes through `restore_agreed`: a failed read is held instead of raised (so the
failing process still reaches the barrier that ends Orbax's restore), then the processes exchange
their outcomes and all of them take the same decision on the step.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from data_pipeline import atomic_files
from medq_jax import sharding as sharding_lib
from medq_jax.convert.core import flatten
from medq_jax.models.medq_uni import abstract_params

CHECKPOINTS_SUBDIR = "checkpoints"
CHECKSUMS_SUBDIR = "checkpoint_checksums"  # <workdir>/checkpoint_checksums/<step>.json
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


# ------------------------------------------------------------------------------ checksums


def _bits(x: jax.Array) -> jax.Array:
  """The array's bit pattern as uint32 (8/16-bit types widened, 64-bit split in two)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = jnp.dtype(x.dtype).itemsize
  if size == 8:
    return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).reshape(-1)


def _fingerprint(x: jax.Array) -> jax.Array:
  """sum_i bits_i * w_i mod 2**32 with odd, position-dependent weights w_i: a flipped bit k
  changes the sum by an odd multiple of 2**k (never 0 mod 2**32); moved values change it too."""
  bits = _bits(x)
  index = jnp.arange(bits.size, dtype=jnp.uint32)
  weights = (index * jnp.uint32(2654435761)) | jnp.uint32(1)
  return jnp.sum(bits * weights, dtype=jnp.uint32) ^ jnp.uint32(bits.size)


_fingerprints_jit = jax.jit(lambda tree: jax.tree_util.tree_map(_fingerprint, tree))


def fingerprints(tree: Any) -> dict[str, int]:
  """{path: fingerprint} of every array leaf of `tree` (any sharding, any process count: the
  sum is computed by XLA over the global array)."""
  values = jax.device_get(_fingerprints_jit(tree))
  name = lambda path: "/".join(
    str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path
  )
  return {name(path): int(v) for path, v in jax.tree_util.tree_flatten_with_path(values)[0]}


def checksum_path(directory: str, step: int) -> str:
  """The checksum file of `step` of the checkpoint directory `directory`."""
  return os.path.join(os.path.dirname(os.path.abspath(directory)), CHECKSUMS_SUBDIR, f"{step}.json")


def write_checksums(directory: str, step: int, tree: Any) -> None:
  """Writes `fingerprints(tree)` for `step` (process 0; atomically: a partial file never stays)."""
  values = fingerprints(tree)
  if jax.process_index() != 0:
    return
  path = checksum_path(directory, step)
  atomic_files.atomic_write_text(path, json.dumps(values, sort_keys=True))


def prune_checksums(directory: str, steps) -> None:
  """Removes checksum files of steps no longer in `steps` (Orbax pruned them)."""
  folder = os.path.dirname(checksum_path(directory, 0))
  if jax.process_index() != 0 or not os.path.isdir(folder):
    return
  keep = {f"{s}.json" for s in steps}
  for name in os.listdir(folder):
    if name.endswith(".json") and name not in keep:
      os.remove(os.path.join(folder, name))


def verify_checksums(directory: str, step: int, tree: Any, prefix: str = "") -> None:
  """Raises CheckpointError naming the step, the checksum file and the arrays whose restored
  values differ from what was saved. `tree` is a restored subtree at `prefix` ("params").
  A step saved without a checksum file (older runs) is accepted with a warning."""
  path = checksum_path(directory, step)
  saved = atomic_files.read_json(
    path, "unreadable checksum file", lambda message: CheckpointError(f"step {step}: {message}")
  )
  if saved is None:
    logging.warning("checkpoint step %d: no checksum file %s; not verified", step, path)
    return
  actual = fingerprints(tree)
  name = lambda key: f"{prefix}/{key}" if prefix else key
  wrong = sorted(key for key, value in actual.items() if saved.get(name(key)) != value)
  if wrong:
    shown = ", ".join(name(k) for k in wrong[:5]) + (
      f" (+{len(wrong) - 5})" if len(wrong) > 5 else ""
    )
    raise CheckpointError(
      f"step {step}: {len(wrong)} array(s) differ from the checksums in {path}: {shown}"
    )


def open_manager(directory: str) -> ocp.CheckpointManager:
  """A read-only view of the steps in `directory` (a `checkpoint_dir`)."""
  if not os.path.isdir(directory):
    raise CheckpointError(
      f"{directory}: no such checkpoint directory (expected "
      f"<workdir>/{CHECKPOINTS_SUBDIR} of a medq-train run)"
    )
  options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
  # Only the state item is read; a PyTree handler reads its metadata and partial restores. The
  # data item (the Grain iterator position) gets its handler too, where Grain is installed, so
  # orbax does not warn at every read that it has none.
  handlers = {STATE_ITEM: holding_failed_reads(ocp.PyTreeCheckpointHandler())}
  try:
    import grain

    handlers[DATA_ITEM] = holding_failed_reads(grain.checkpoint.CheckpointHandler())
  except ImportError:
    pass
  # Orbax warns "Given directory is read only" at every read-only open: what we asked for, not a
  # problem, and it sat in every evaluation's log looking like one.
  quiet = _DropMessage("Given directory is read only=%s")
  absl_logger = logging.getLogger("absl")
  absl_logger.addFilter(quiet)
  try:
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)
  finally:
    absl_logger.removeFilter(quiet)


class _DropMessage(logging.Filter):
  """Drops the log records whose unformatted message is `template`."""

  def __init__(self, template: str):
    super().__init__()
    self.template = template

  def filter(self, record: logging.LogRecord) -> bool:
    return record.msg != self.template


def has_steps(directory: str) -> bool:
  """Whether Orbax lists a step in `directory` (a `checkpoint_dir`): what a resume restores. The
  same answer on every process, or CheckpointError (`agreed_steps`)."""
  return bool(agreed_steps(directory))


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


def check_fits(directory: str, step: int, model_config, manager=None, abstract=None) -> None:
  """CheckpointError (one line) unless the params saved at `step` have `model_config`'s names
  and shapes (another size or expert scope is named before anything is built or compiled).
  `abstract`: the caller's `nn.unbox(abstract_params(model_config))`, so the model's init is not
  traced twice."""
  own = manager is None
  manager = open_manager(directory) if own else manager
  if abstract is None:
    abstract = nn.unbox(abstract_params(model_config))
  try:
    saved = manager.item_metadata(step)[STATE_ITEM]
    saved_params = dict(getattr(saved, "tree", saved))["params"]
    _check_shapes(saved_params, abstract, f"{directory}/{step}")
  finally:
    if own:
      manager.close()


def _has_ema(manager, step: int) -> bool:
  """Whether the train state saved at `step` holds an EMA of the parameters."""
  saved = manager.item_metadata(step)[STATE_ITEM]
  return bool(dict(getattr(saved, "tree", saved)).get("ema"))


def _restore_step(manager, directory, step, abstract, shardings, cast, item="params"):
  """The params (or their EMA: item="ema") of one step, read in their saved dtype, verified,
  then cast."""
  # The saved dtypes, not config.model.param_dtype's: the checksums are of the saved bits.
  saved = flatten(
    dict(getattr(meta := manager.item_metadata(step)[STATE_ITEM], "tree", meta))[item]
  )
  abstract = jax.tree_util.tree_map_with_path(
    lambda path, leaf: jax.ShapeDtypeStruct(
      leaf.shape, saved["/".join(str(k.key) for k in path)].dtype
    ),
    abstract,
  )
  target = {item: sharding_lib.placed_shapes(abstract, shardings)}
  restore_args = jax.tree_util.tree_map(
    lambda leaf, sharding: ocp.ArrayRestoreArgs(dtype=leaf.dtype, sharding=sharding),
    abstract,
    shardings,
  )
  restored = restore_agreed(
    manager,
    step,
    ocp.args.Composite(
      **{
        STATE_ITEM: ocp.args.PyTreeRestore(
          item=target, restore_args={item: restore_args}, partial_restore=True
        )
      }
    ),
  )
  params = restored[STATE_ITEM][item]
  verify_checksums(directory, step, params, prefix=item)
  if cast is None:
    return params
  return jax.tree_util.tree_map(lambda x: x.astype(cast), params)


def restore_params(
  workdir: str,
  model_config,
  *,
  step: int | None = None,
  mesh=None,
  rules=None,
  dtype: str | None = None,
  prefer_ema: bool = False,
) -> tuple[Any, int]:
  """Restores the MedQUni parameters of a training run; returns (params, step).

  prefer_ema: restore the parameters' EMA instead when the step has one (`train.ema_decay`).

  workdir: a medq-train workdir; step: None for the latest good one (a step that does not read
  or fails its checksums is reported and the one before it is used); an explicit step must be
  good. With `mesh` and `rules` the parameters are placed into the mesh's shardings from their
  logical names (any device count); otherwise on the default device. dtype: None keeps the saved
  dtype, or e.g. "bfloat16".
  """
  directory = checkpoint_dir(workdir)
  steps = agreed_steps(directory)  # first: opening the manager is a barrier of all processes
  manager = open_manager(directory)
  try:
    if not steps:
      raise CheckpointError(f"{directory}: no checkpoint steps found")
    if step is not None:
      if int(step) not in steps:
        raise CheckpointError(f"{directory}: no step {step}; steps: {sorted(steps)}")
      steps = [int(step)]
    boxed = abstract_params(model_config)
    abstract = nn.unbox(boxed)
    check_fits(directory, steps[0], model_config, manager, abstract)
    if mesh is not None:
      shardings = sharding_lib.mesh_shardings(boxed, mesh, rules)
    else:
      device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      shardings = jax.tree_util.tree_map(lambda _: device, abstract)
    cast = jnp.dtype(dtype) if dtype else None
    problems = []
    absorb_abandoned_reads()
    for candidate in steps:
      try:
        item = "ema" if prefer_ema and _has_ema(manager, candidate) else "params"
        restored = _restore_step(manager, directory, candidate, abstract, shardings, cast, item)
        if item == "ema":
          logging.info("step %d: restored the parameters' EMA", candidate)
        return restored, candidate
      except Exception as error:  # any unreadable step: report it, try the previous one
        problems.append(describe_failure(directory, candidate, error))
        if candidate != steps[-1]:
          logging.warning("%s; trying the previous step", problems[-1])
    if step is not None:  # the one step asked for
      raise CheckpointError(problems[0])
    raise CheckpointError(f"{directory}: no usable checkpoint: " + "; ".join(problems))
  finally:
    manager.close()


def _is_abandoned_read(unraisable) -> bool:
  """Whether an unraisable exception comes from the reads Orbax abandons when a restore fails: an
  Orbax coroutine collected unfinished, or TensorStore completing a read into the closed loop
  (`RuntimeError: Event loop is closed` raised in `call_soon_threadsafe`)."""
  code = getattr(unraisable.object, "cr_code", None)
  if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
    return True
  error, trace = unraisable.exc_value, unraisable.exc_traceback
  if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
    return False
  frames = [frame.f_code.co_name for frame, _ in traceback.walk_tb(trace)]
  return "call_soon_threadsafe" in frames


class _AbandonedTaskFilter(logging.Filter):
  """Drops asyncio's "<Task|Future|_GatheringFuture> exception was never retrieved" for a read of
  a restore that had already failed (an Orbax task, its gather, a TensorStore read), counting it
  with the others."""

  MARKS = ("orbax", "Encountered error while reading array", "OCDBT database")

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    first_line = message.split("\n", 1)[0]
    if first_line.endswith(" exception was never retrieved") and any(
      mark in message for mark in self.MARKS
    ):
      ABANDONED_READS["absorbed"] += 1
      return False
    return True


ABANDONED_READS = {"absorbed": 0}  # how many such reports absorb_abandoned_reads() has kept quiet


def absorb_abandoned_reads() -> None:
  """Keeps a failed restore's leftover reads from burying its one-line report.

  Orbax runs a restore's array reads as asyncio tasks on a loop it closes as soon as one read
  fails (a truncated or deleted file); the other reads are left running, and each later prints a
  page of traceback through `sys.unraisablehook` (`Exception ignored in: <coroutine
  _read_array_index_and_device_put>`, `RuntimeError: Event loop is closed`): 5,000 lines for one
  truncated file of a tiny model, some before the failure reaches the caller. Called before a
  restore, this puts a filter in front of the current hook (once) that counts those reports
  (`ABANDONED_READS`) and passes every other one on; it also drops asyncio's log record of each
  failed Orbax task whose exception nobody retrieved, and the `RuntimeWarning` of a read that
  never started ("coroutine ... was never awaited").
  """
  warnings.filterwarnings(
    "ignore",
    message="coroutine '_read_array_index_and_device_put' was never awaited",
    category=RuntimeWarning,
  )
  asyncio_logger = logging.getLogger("asyncio")
  if not any(isinstance(f, _AbandonedTaskFilter) for f in asyncio_logger.filters):
    asyncio_logger.addFilter(_AbandonedTaskFilter())
  previous = sys.unraisablehook
  if getattr(previous, "absorbs_abandoned_reads", False):
    return

  def hook(unraisable):
    if _is_abandoned_read(unraisable):
      ABANDONED_READS["absorbed"] += 1
      return
    previous(unraisable)

  hook.absorbs_abandoned_reads = True
  sys.unraisablehook = hook


def root_cause(error: BaseException) -> str:
  """The innermost cause of a failed read, in one line (TensorStore's names the file and the
  array key; Orbax's outer error is a page of TensorStore spec)."""
  root = error
  while (root.__cause__ or root.__context__) is not None:
    root = root.__cause__ or root.__context__
  text = " ".join(str(root).split("See full TensorStore details")[0].split())
  return f"{type(root).__name__}: {text[:400]}"


def describe_failure(directory: str, step: int, error: Exception) -> str:
  """One line: which step failed to restore and why."""
  if isinstance(error, CheckpointError):
    return str(error)
  return f"step {step} in {directory} does not restore ({root_cause(error)})"


# ------------------------------------------------------------------------------ agreeing processes


class ReadFailure:
  """What an item's restore returns instead of raising (`holding_failed_reads`): the error."""

  def __init__(self, error: Exception):
    self.error = error


def holding_failed_reads(handler):
  """`handler` (an Orbax item handler instance) whose `restore` returns a `ReadFailure` instead
  of raising. Orbax ends every restore with a barrier of all processes (`Checkpointer.restore`);
  a process whose read raised skipped it and tried the previous step, so its next barrier paired
  with the others' barrier of the failed step, and the processes went on to verify different
  steps together. Holding the error lets every process finish the restore; `restore_agreed` then
  decides. The instance keeps its class, so Orbax's registry
  of argument types and the handler name saved with each step are unchanged."""
  read = handler.restore

  def restore(directory, *args, **kwargs):
    try:
      return read(directory, *args, **kwargs)
    except Exception as error:  # held, then raised on every process by restore_agreed
      return ReadFailure(error)

  handler.restore = restore
  return handler


MESSAGE_BYTES = 1024  # each process's failure text exchanged by restore_agreed (cut to this)


def process_messages(message: str) -> list[str]:
  """Every process's `message` (a collective: all processes call it), in process order."""
  if jax.process_count() == 1:
    return [message]
  raw = message.encode()[:MESSAGE_BYTES].ljust(MESSAGE_BYTES, b"\0")
  gathered = multihost_utils.process_allgather(np.frombuffer(raw, np.uint8))
  rows = np.asarray(gathered).reshape(jax.process_count(), MESSAGE_BYTES)
  return [bytes(row).rstrip(b"\0").decode(errors="ignore") for row in rows]


def agreed_steps(directory: str) -> list[int]:
  """The finalized steps in `directory` (a `checkpoint_dir`, which may not exist yet), newest
  first, checked to be the same on every process (a collective: all processes call it). A workdir
  on each host's own disk instead of one shared filesystem gives each process its own list; the
  processes would then restore different steps, or one would start afresh while another resumed.
  CheckpointError naming each process's steps. Listed without a CheckpointManager: opening one is
  itself a barrier of all processes, which a process with no such directory would never enter."""
  steps = sorted(ocp.path.step.checkpoint_steps(directory), reverse=True)
  seen = process_messages(",".join(map(str, steps)))
  if len(set(seen)) > 1:
    listed = "; ".join(f"process {i}: [{text}]" for i, text in enumerate(seen))
    raise CheckpointError(
      f"{directory}: the processes see different checkpoint steps ({listed}); the workdir must "
      "be one filesystem shared by every host"
    )
  return steps


def restore_agreed(manager, step: int, args):
  """`manager.restore(step, args=args)` taken as one decision of all processes: the restored
  items, or, when any process cannot read the step, the same CheckpointError on every process,
  naming each failing process's file and error. Two checks, each agreed before anyone goes on:
  what Orbax checks before reading any item (`missing_before_read`), then each item's read.
  `manager`'s item handlers must be `holding_failed_reads` (`open_manager`,
  `train.checkpoint.make_manager`)."""
  directory = str(manager.directory)
  step_dir = manager.directory / str(step)  # an etils Path: local or cloud storage
  _agree(directory, step, missing_before_read(step_dir, list(args.keys())))
  restored = manager.restore(step, args=args)
  held = [value.error for value in restored.values() if isinstance(value, ReadFailure)]
  _agree(directory, step, "; ".join(root_cause(error) for error in held))
  return restored


def missing_before_read(step_dir, items: list[str]) -> str:
  """What Orbax raises on before it reads any item, outside the handlers `holding_failed_reads`
  wraps: a missing step directory or item directory ('' when all are there). Raised on one
  process only, it left the others in the restore's closing barrier (measured: a step whose
  state item was gone from one host's copy hung the other process). step_dir: an etils Path."""
  if not step_dir.is_dir():
    return f"{step_dir}: no such step directory"
  missing = [item for item in items if not (step_dir / item).is_dir()]
  return f"{step_dir}: no {', '.join(missing)} item" if missing else ""


def _agree(directory: str, step: int, local_failure: str) -> None:
  """Exchanges every process's failure text for `step` (a collective); raises the same
  CheckpointError on every process when any is non-empty."""
  failed = [(i, text) for i, text in enumerate(process_messages(local_failure)) if text]
  if not failed:
    return
  if jax.process_count() == 1:
    reason = failed[0][1]
  else:
    reason = "; ".join(f"process {i}: {text}" for i, text in failed)
  raise CheckpointError(f"step {step} in {directory} does not restore ({reason})")


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
