"""Train state, optimizer, the trainable parameter scope of a stage, and sharded initialisation.

Parameters are created already sharded: `jax.jit(init, out_shardings=...)` from the logical
partitioning metadata, so no host ever materialises the whole tree.

Stage 1 trains the gen (Med-IR) parameters alone, and `train.freeze` (`freeze.py`) freezes named
groups or regexes on top: `split_params` cuts the tree into the trainable and the frozen subtree;
the train step differentiates the trainable one only (no weight gradient is computed for a frozen
parameter) and the optimizer holds state for it alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from medq_jax import layout as layout_lib
from medq_jax import sharding as sharding_lib
from medq_jax.models.medq_uni import MedQUni, init_batch
from medq_jax.models.vae import FluxAutoEncoder
from medq_jax.train import freeze as freeze_lib
from medq_jax.train import precision as precision_lib
from medq_jax.train.config_checks import ConfigError


@flax.struct.dataclass
class TrainState:
  """Everything a train step updates. `params` are all MedQUni parameters (frozen ones
  included, so a checkpoint restores a whole model); `opt_state` covers the trainable ones;
  `ema` (when `train.ema_decay` > 0) is the whole tree again, averaged; evaluation prefers it."""

  step: jax.Array
  params: Any
  opt_state: Any
  ema: Any = None  # the parameters' exponential moving average (train.ema_decay > 0), else None


def path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def is_trainable(name: str, stage: int, stage1_regex: str) -> bool:
  """Whether the parameter at path `name` ("decoder/layers/mlp_moe_gen/...") trains in `stage`
  by the stage's rule alone (`freeze.stage_trains`; `train.freeze` is `split_params`' business):
  everything in stage 2, the gen (Med-IR) parameters matching `stage1_regex` in stage 1."""
  return freeze_lib.stage_trains(name, stage, stage1_regex)


def check_freeze(params: Any, train_config) -> None:
  """`train.freeze` against the parameter paths of `params` (arrays or shapes): raises
  `ConfigError` for an entry that matches nothing or leaves nothing to train."""
  found = freeze_lib.problems(traverse_util.flatten_dict(params, sep="/"), train_config)
  if found:
    raise ConfigError("; ".join(found))


def trainable_labels(params: Any, stage: int, stage1_regex: str) -> Any:
  """'train' / 'freeze' per parameter (`is_trainable`)."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: "train" if is_trainable(path_name(path), stage, stage1_regex) else "freeze",
    params,
  )


def split_params(params: dict, train_config) -> tuple[dict, dict]:
  """(trainable, frozen): two nested dicts holding the parameters of `params` that train in
  this run (`trains_predicate`: the stage's rule, then `train.freeze`) and the others; `frozen`
  is empty in stage 2 without `train.freeze`. Idempotent on a trainable subtree.
  `merge_params` puts them back together."""
  flat = traverse_util.flatten_dict(params, sep="/")
  trains = freeze_lib.trains_predicate(train_config)
  trainable = {k: v for k, v in flat.items() if trains(k)}
  frozen = {k: v for k, v in flat.items() if not trains(k)}
  return traverse_util.unflatten_dict(trainable, sep="/"), traverse_util.unflatten_dict(
    frozen, sep="/"
  )


def merge_params(trainable: dict, frozen: dict) -> dict:
  """The whole parameter tree from `split_params`' two parts (leaves are not copied)."""
  flat = traverse_util.flatten_dict(trainable, sep="/")
  flat.update(traverse_util.flatten_dict(frozen, sep="/"))
  return traverse_util.unflatten_dict(flat, sep="/")


def _on_trainable(tx: optax.GradientTransformation, train_config) -> optax.GradientTransformation:
  """`tx` applied to the trainable subtree: init/update accept the whole tree or the trainable
  subtree (`split_params` is idempotent on it) and return state/updates of that subtree."""
  trainable = lambda tree: split_params(tree, train_config)[0]

  def init(params):
    return tx.init(trainable(params))

  def update(updates, state, params=None):
    return tx.update(trainable(updates), state, None if params is None else trainable(params))

  return optax.GradientTransformation(init, update)


def make_optimizer(train_config, params: Any = None) -> optax.GradientTransformation:
  """AdamW with linear warmup + cosine decay (paper: cosine from 2e-5) and global-norm clipping,
  over the stage's trainable parameters only: `init(params)` keeps no state for frozen ones and
  `update` takes and returns updates of the trainable subtree (`split_params`). `params` is
  unused (kept for callers that pass it). The cosine's horizon is `train.schedule_steps`
  (fixed when a run starts, `run_record.settle`), else `train.steps`."""
  del params
  horizon = int(train_config.get("schedule_steps", 0) or train_config.steps)
  schedule = optax.warmup_cosine_decay_schedule(
    0.0,
    train_config.learning_rate,
    max(train_config.warmup_steps, 1),
    max(horizon, train_config.warmup_steps + 1),
  )
  adamw = optax.chain(
    optax.clip_by_global_norm(train_config.grad_clip_norm),
    optax.adamw(schedule, weight_decay=train_config.weight_decay),
  )
  return _on_trainable(adamw, train_config)


def build_models(model_config):
  """(MedQUni, FluxAutoEncoder) modules for `config.model`."""
  vae = FluxAutoEncoder(model_config.vae)
  return MedQUni(model_config), vae


def _init_fns(model, vae, spec: layout_lib.LayoutSpec, model_config):
  batch = init_batch(model_config)
  image = jnp.zeros((1, spec.vae_image_size, spec.vae_image_size, 3), jnp.float32)
  model_init = lambda rng: model.init(rng, batch)["params"]
  vae_init = lambda rng: vae.init(rng, image)["params"]
  return model_init, vae_init


def abstract_params(model, vae, spec: layout_lib.LayoutSpec, model_config) -> tuple[Any, Any]:
  """(model, VAE) parameter shapes, boxed with their logical axes, from the same init functions
  `init_params_sharded` runs; only traced (`jax.eval_shape`), nothing allocated."""
  key = jax.random.key(0)
  return tuple(jax.eval_shape(fn, key) for fn in _init_fns(model, vae, spec, model_config))


def init_params_sharded(model, vae, spec, model_config, mesh, rules, rng, model_params=True):
  """Initialises (model params, vae params) directly into their mesh shardings.

  Returns (params, vae_params, param_shardings, vae_shardings), params unboxed. With
  `model_params=False` the model's are only shapes (ShapeDtypeStructs in their shardings, for a
  run that restores them from its checkpoint); the VAE is initialised from the same key either
  way, so a run with a randomly initialised frozen VAE gets the same one back when it resumes.
  """
  model_init, vae_init = _init_fns(model, vae, spec, model_config)
  rng_model, rng_vae = jax.random.split(rng)
  results = []
  for init_fn, key, real in ((model_init, rng_model, model_params), (vae_init, rng_vae, True)):
    abstract = jax.eval_shape(init_fn, key)
    shardings = sharding_lib.mesh_shardings(abstract, mesh, rules)
    if real:
      params = jax.jit(lambda k, fn=init_fn: nn.unbox(fn(k)), out_shardings=shardings)(key)
    else:
      params = sharding_lib.placed_shapes(nn.unbox(abstract), shardings)
    results.append((params, shardings))
  (params, param_shardings), (vae_params, vae_shardings) = results
  return params, vae_params, param_shardings, vae_shardings


def create_train_state(params, optimizer, ema_decay: float = 0.0) -> TrainState:
  """Step 0; with `ema_decay` > 0 the EMA starts as a copy of the parameters."""
  ema = jax.tree_util.tree_map(jnp.copy, params) if ema_decay else None
  return TrainState(
    step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), ema=ema
  )


def train_state_shardings(state_shape: Any, params: Any, mesh) -> Any:
  """Shardings of a TrainState for `params` (arrays or ShapeDtypeStructs with shardings): every
  leaf that mirrors a parameter (the parameter, its AdamW moments, its EMA) takes that
  parameter's sharding, matched by tree-path suffix and shape; the rest (step, counts) is
  replicated. Without this, jit(create_train_state) leaves the moments replicated: zeros_like
  carries no data dependency that XLA would shard (issue 11: +95 GiB per GPU at 7B stage 2)."""
  keystr = jax.tree_util.keystr
  by_path = [(keystr(path), p) for path, p in jax.tree_util.tree_flatten_with_path(params)[0]]

  def pick(path, leaf):
    name = keystr(path)
    for param_path, param in by_path:
      if name.endswith(param_path) and leaf.shape == param.shape:
        return param.sharding
    return sharding_lib.replicated(mesh)

  return jax.tree_util.tree_map_with_path(pick, state_shape)


def jitted_state_init(params: Any, optimizer, mesh, ema_decay: float = 0.0):
  """jit(create_train_state) with every moment and EMA leaf placed like its parameter (the
  trainer's init; `launch/memory_budget.py` compiles the same function)."""
  init = lambda p: create_train_state(p, optimizer, ema_decay)
  shardings = train_state_shardings(jax.eval_shape(init, params), params, mesh)
  return jax.jit(init, out_shardings=shardings)


def init_train_state(params: Any, optimizer, mesh, ema_decay: float = 0.0) -> TrainState:
  """Step 0 of training, sharded like the parameters (`jitted_state_init`). For parameters
  given as shapes (ShapeDtypeStructs with shardings) the state's shapes and shardings: the
  restore target of a resume, nothing allocated."""
  init = jitted_state_init(params, optimizer, mesh, ema_decay)
  if all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree_util.tree_leaves(params)):
    return jax.eval_shape(init, params)
  return init(params)


@dataclasses.dataclass
class TrainSetup:
  """Everything a training or benchmark run builds from a config before its first step."""

  spec: layout_lib.LayoutSpec
  model: Any
  vae: Any
  mesh: Any
  params: Any
  vae_params: Any
  param_shardings: Any
  vae_shardings: Any
  optimizer: optax.GradientTransformation


def build_setup(config, rng, model_params: bool = True) -> TrainSetup:
  """Layout spec, modules (in `train.precision`'s dtypes), mesh, parameters initialised into
  their shardings (`model_params=False`: the model's as shapes only, for a resume), and
  optimizer. A precision conflict or a `train.freeze` entry that matches nothing raises
  `ConfigError`."""
  found = precision_lib.problems(config)
  if found:
    raise ConfigError("; ".join(found))
  model_config = precision_lib.model_config(config)
  spec = layout_lib.LayoutSpec.from_config(model_config, config.layout, config.train.stage)
  model, vae = build_models(model_config)
  mesh = sharding_lib.make_mesh(config.mesh)
  params, vae_params, param_shardings, vae_shardings = init_params_sharded(
    model, vae, spec, model_config, mesh, config.sharding_rules, rng, model_params
  )
  check_freeze(params, config.train)
  return TrainSetup(
    spec,
    model,
    vae,
    mesh,
    params,
    vae_params,
    param_shardings,
    vae_shardings,
    make_optimizer(config.train, params),
  )
