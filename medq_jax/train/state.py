"""Train state, optimizer and sharded initialisation.

Parameters are created already sharded: `jax.jit(init, out_shardings=...)` from the logical
partitioning metadata, so no host ever materialises the whole tree.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from medq_jax import layout as layout_lib
from medq_jax import sharding as sharding_lib
from medq_jax.models.medq_uni import MedQUni, init_batch
from medq_jax.models.vae import FluxAutoEncoder


@flax.struct.dataclass
class TrainState:
  """Everything a train step updates. `params` are the trainable MedQUni parameters."""

  step: jax.Array
  params: Any
  opt_state: Any


def path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def trainable_labels(params: Any, stage: int, stage1_regex: str) -> Any:
  """'train' / 'freeze' per parameter: stage 1 trains only the gen (Med-IR) expert."""
  pattern = re.compile(stage1_regex)

  def label(path, _):
    if stage == 2:
      return "train"
    return "train" if pattern.search(path_name(path)) else "freeze"

  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(train_config, params: Any) -> optax.GradientTransformation:
  """AdamW with linear warmup + cosine decay (paper: cosine from 2e-5), global-norm clipping,
  and frozen parameters (stage 1) set to zero updates."""
  schedule = optax.warmup_cosine_decay_schedule(
    0.0,
    train_config.learning_rate,
    max(train_config.warmup_steps, 1),
    max(train_config.steps, train_config.warmup_steps + 1),
  )
  adamw = optax.chain(
    optax.clip_by_global_norm(train_config.grad_clip_norm),
    optax.adamw(schedule, weight_decay=train_config.weight_decay),
  )
  labels = trainable_labels(params, train_config.stage, train_config.stage1_trainable)
  return optax.multi_transform({"train": adamw, "freeze": optax.set_to_zero()}, labels)


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


def init_params_sharded(model, vae, spec, model_config, mesh, rules, rng):
  """Initialises (model params, vae params) directly into their mesh shardings.

  Returns (params, vae_params, param_shardings, vae_shardings), params unboxed.
  """
  model_init, vae_init = _init_fns(model, vae, spec, model_config)
  rng_model, rng_vae = jax.random.split(rng)
  results = []
  for init_fn, key in ((model_init, rng_model), (vae_init, rng_vae)):
    abstract = jax.eval_shape(init_fn, key)
    shardings = sharding_lib.mesh_shardings(abstract, mesh, rules)
    params = jax.jit(lambda k, fn=init_fn: nn.unbox(fn(k)), out_shardings=shardings)(key)
    results.append((params, shardings))
  (params, param_shardings), (vae_params, vae_shardings) = results
  return params, vae_params, param_shardings, vae_shardings


def create_train_state(params, optimizer) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


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


def build_setup(config, rng) -> TrainSetup:
  """Layout spec, modules, mesh, parameters initialised into their shardings, and optimizer."""
  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, config.train.stage)
  model, vae = build_models(config.model)
  mesh = sharding_lib.make_mesh(config.mesh)
  params, vae_params, param_shardings, vae_shardings = init_params_sharded(
    model, vae, spec, config.model, mesh, config.sharding_rules, rng
  )
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
