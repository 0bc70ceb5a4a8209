"""The trainer's config and shape checks, in one place, run before anything is built or
compiled: each problem is one line (a `ConfigError` naming the field and what was expected),
not a ZeroDivisionError, an IndivisibleError or 40 tracebacks from inside a restore."""

from __future__ import annotations

import math
import os

import flax.linen as nn
import jax

from medq_jax import checkpoints
from medq_jax import sharding as sharding_lib
from medq_jax.convert.core import flatten
from medq_jax.models.medq_uni import abstract_params
from medq_jax.train import freeze, precision


class ConfigError(ValueError):
  """A config value the trainer cannot run with; the message names the field."""


def _positive_int(config, field: str, minimum: int) -> None:
  value = config.train.get(field)
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ConfigError(f"train.{field}={value!r}: expected an integer >= {minimum}")


def check_numbers(config) -> None:
  """Steps, intervals and limits of `config.train`."""
  _positive_int(config, "steps", 0)
  for field in ("batch_size", "checkpoint_every", "log_every"):
    _positive_int(config, field, 1)
  for field in ("max_consecutive_nonfinite", "max_consecutive_skips", "grad_accum_steps"):
    if field in config.train:
      _positive_int(config, field, 1)
  decay = config.train.get("ema_decay", 0.0)
  if not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
    raise ConfigError(f"train.ema_decay={decay!r}: expected 0 (no EMA) or a decay in (0, 1)")
  if config.train.get("schedule_steps", 0):
    _positive_int(config, "schedule_steps", 1)
  _positive_int(config, "warmup_steps", 0)
  # The optimizer's numbers: a negative rate trains uphill, a zero clip norm zeroes every
  # update, a NaN poisons the state; each would run to the end without an error.
  for field, minimum, inclusive in (
    ("learning_rate", 0.0, False),
    ("grad_clip_norm", 0.0, False),
    ("weight_decay", 0.0, True),
  ):
    value = config.train.get(field)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < minimum or (value == 0 and not inclusive):
      expected = "a finite number >= 0" if inclusive else "a finite number > 0"
      raise ConfigError(f"train.{field}={value!r}: expected {expected}")


def check_mesh_and_batch(config, num_devices: int | None = None) -> tuple[int, ...]:
  """The mesh shape resolves on the devices, and the global batch splits over the data-parallel
  axes (data x fsdp) and the processes. Returns the resolved shape."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  axes = tuple(config.mesh.axes)
  shape = config.mesh.shape
  if not isinstance(shape, (tuple, list)) or len(shape) != len(axes):
    raise ConfigError(
      f"mesh.shape={shape!r}: expected {len(axes)} sizes for the axes {axes}, e.g. (1, -1, 1)"
    )
  try:
    shape = sharding_lib.resolve_mesh_shape(shape, num_devices)
  except ValueError as error:
    raise ConfigError(str(error)) from None
  sizes = dict(zip(axes, shape))
  data_parallel = sizes.get("data", 1) * sizes.get("fsdp", 1)
  batch = config.train.batch_size
  accum = int(config.train.get("grad_accum_steps", 1) or 1)
  if accum > 1 and batch % (accum * data_parallel):
    raise ConfigError(
      f"train.batch_size={batch} is not divisible by train.grad_accum_steps={accum} x the "
      f"data-parallel size {data_parallel} (mesh data={sizes.get('data', 1)} x "
      f"fsdp={sizes.get('fsdp', 1)}): each micro-batch must split over the devices; use a "
      f"multiple of {accum * data_parallel}"
    )
  if batch % data_parallel:
    raise ConfigError(
      f"train.batch_size={batch} is not divisible by the data-parallel size {data_parallel} "
      f"(mesh data={sizes.get('data', 1)} x fsdp={sizes.get('fsdp', 1)}); use a multiple of "
      f"{data_parallel}"
    )
  if batch % jax.process_count():
    raise ConfigError(
      f"train.batch_size={batch} is not divisible by the {jax.process_count()} processes"
    )
  return shape


def check_precision_and_freeze(config) -> None:
  """`train.precision` agrees with `model.dtype` / `model.param_dtype`, and every `train.freeze`
  entry matches a parameter of `config.model` (its shapes only: nothing is initialised)."""
  found = precision.problems(config)
  if not found and freeze.entries(config.train):
    names = flatten(nn.unbox(abstract_params(config.model)))
    found = freeze.problems(names, config.train)
  if found:
    raise ConfigError("; ".join(found))


def _latest_readable_step(directory: str, manager) -> int | None:
  """The newest step whose metadata reads (an unreadable one is the restore's business)."""
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      manager.item_metadata(step)
      return step
    except Exception:  # corrupt metadata: the resume reports it and falls back
      continue
  return None


def _train_state_problem(config, saved_state, params) -> str:
  """'' when the train state saved by a run has the parts this config's state has: a parameter
  EMA exactly when `train.ema_decay` > 0, parameters in the same dtype, and AdamW moments of the
  same shapes (the same trainable parameters: `train.stage`, `train.freeze`). `params`: the
  config's abstract parameters, in the precision policy's dtypes. Otherwise what differs and what
  to do: Orbax would refuse every step with a page about tree structures, read as corrupt
  checkpoints."""
  from medq_jax.train import state as state_lib  # imported late: state imports this module

  saved = dict(getattr(saved_state, "tree", saved_state))
  decay = float(config.train.get("ema_decay", 0.0))
  if bool(saved.get("ema")) != (decay > 0):
    if saved.get("ema"):
      return (
        f"the checkpoint holds a parameter EMA, train.ema_decay={decay} asks for none; resume "
        "with the train.ema_decay the run started with, or start a new workdir"
      )
    return (
      f"the checkpoint holds no parameter EMA, train.ema_decay={decay} asks for one; resume "
      "with train.ema_decay=0, or start a new workdir (init.from_checkpoint=<this run> starts "
      "one from its parameters)"
    )
  saved_params, wanted_params = flatten(saved.get("params", {})), flatten(params)
  recast = sorted(
    name
    for name in saved_params.keys() & wanted_params.keys()
    if str(saved_params[name].dtype) != str(wanted_params[name].dtype)
  )
  if recast:
    name = recast[0]
    return (
      f"the checkpoint stores the parameters in {saved_params[name].dtype}, this config in "
      f"{wanted_params[name].dtype} ({len(recast)} arrays, e.g. {name}); their checksums are of "
      "the saved bits: resume with the model.param_dtype the run started with (a new run takes "
      "them in any dtype through init.from_checkpoint)"
    )
  optimizer = state_lib.make_optimizer(config.train)
  wanted = jax.eval_shape(optimizer.init, params)
  shapes = lambda tree: sorted(tuple(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))
  saved_shapes, wanted_shapes = shapes(saved.get("opt_state", {})), shapes(wanted)
  if saved_shapes != wanted_shapes:
    return (
      f"the checkpoint's optimizer state ({len(saved_shapes)} arrays) is not this config's "
      f"({len(wanted_shapes)}): another set of trainable parameters (train.stage="
      f"{config.train.stage}, train.freeze={tuple(config.train.get('freeze', ()))}); resume with "
      "the settings the run started with, or start a new workdir"
    )
  return ""


def check_checkpoint_fits(run_dir: str, model_config, field: str, config=None) -> None:
  """A run's latest checkpoint has `model_config`'s parameter names and shapes (one line); with
  the run's `config`, also the train state's parts (`_train_state_problem`)."""
  directory = checkpoints.checkpoint_dir(run_dir)
  if not os.path.isdir(directory):
    if field == "init.from_checkpoint":
      raise ConfigError(f"{field}={run_dir}: no checkpoints in {directory}")
    return
  manager = checkpoints.open_manager(directory)
  try:
    step = _latest_readable_step(directory, manager)
    if step is None:
      return
    # One trace of the model's init for both checks (the policy changes dtypes, not shapes).
    abstract = nn.unbox(
      abstract_params(precision.model_config(config) if config is not None else model_config)
    )
    try:
      checkpoints.check_fits(directory, step, model_config, manager, abstract)
    except checkpoints.CheckpointError as error:
      raise ConfigError(f"{field}: {error}") from None
    if config is not None:
      saved_state = manager.item_metadata(step)[checkpoints.STATE_ITEM]
      problem = _train_state_problem(config, saved_state, abstract)
      if problem:
        raise ConfigError(f"{field} (step {step}): {problem}")
  finally:
    manager.close()


def check_training(config, workdir: str) -> bool:
  """Every check above for a `loop.train(config, workdir)` run: numbers, mesh and batch
  (micro-batches included), precision policy and frozen groups, the checkpoint it resumes from
  (workdir) and, for a run that has no step yet, the one it starts from (init.from_checkpoint:
  a resume restores its own state and reads no init.* weights). Returns whether the run resumes
  (Orbax lists a step in its checkpoint directory)."""
  check_numbers(config)
  check_mesh_and_batch(config)
  check_precision_and_freeze(config)
  # First, as every process must: whether the run resumes, the same on all of them (agreed), so
  # that no process opens a checkpoint another does not.
  resuming = checkpoints.has_steps(checkpoints.checkpoint_dir(workdir))
  check_checkpoint_fits(workdir, config.model, f"resume from {workdir}", config)
  if not resuming and config.get("init") and config.init.get("from_checkpoint"):
    check_checkpoint_fits(config.init.from_checkpoint, config.model, "init.from_checkpoint")
  return resuming
