"""Shared pieces of the packing tests: single-example rows of the tiny layout with texts of
different lengths (and optionally dropped conditions), and the packed spec."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs import medq_uni
from medq_jax import layout as layout_lib
from medq_jax.models.medq_uni import init_batch
from medq_jax.train import state as state_lib
from medq_jax.train import step as step_lib

SPECIAL = dict(pad=0, im_start=1, im_end=2, vision_start=3, vision_end=4)


class CharTokenizer:
  def encode(self, text, add_special_tokens=False):
    return [5 + (ord(c) % 400) for c in text]


def config(stage: int):
  return medq_uni.get_config(f"size=tiny,stage={stage}")


def spec(stage: int, examples_per_row: int = 1, pack_max_und_len: int = 0):
  cfg = config(stage)
  base = layout_lib.LayoutSpec.from_config(cfg.model, cfg.layout, stage)
  return dataclasses.replace(
    base, examples_per_row=examples_per_row, pack_max_und_len=pack_max_und_len
  )


def example(seed: int, size: int = 40):
  rng = np.random.default_rng(seed)
  return dict(
    id=f"ex{seed}",
    low=rng.random((size, size)).astype(np.float32),
    high=rng.random((size, size)).astype(np.float32),
    instruction="restore" + " this image" * (seed % 3),
    description="mild noise" + ", low contrast" * (seed % 4),
  )


def single_rows(stage: int, count: int, dropped=None):
  """`count` single-example rows; dropped: {index: (plan item names dropped)}."""
  one = spec(stage)
  dropped = dropped or {}
  return [
    layout_lib.pack_example(example(i), CharTokenizer(), one, SPECIAL, dropped=dropped.get(i, ()))
    for i in range(count)
  ]


@jax.jit
def perturbed(params, key):
  """Every leaf plus 0.05 N(0, 1) (llm2vae is zero-initialised: its velocity would be 0)."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(
    tree, [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  )


def perturbed_models(cfg):
  """(model, vae, params, vae_params) of `cfg.model`: the model initialised from key 0 and
  `perturbed` (llm2vae starts at zero), the VAE initialised at the tiny layout's image size."""
  model, vae = state_lib.build_models(cfg.model)
  model_key, vae_key, noise_key = jax.random.split(jax.random.key(0), 3)
  params = nn.unbox(jax.jit(model.init)(model_key, init_batch(cfg.model))["params"])
  params = perturbed(params, noise_key)
  size = spec(2).vae_image_size
  vae_params = nn.unbox(jax.jit(vae.init)(vae_key, jnp.zeros((1, size, size, 3)))["params"])
  return model, vae, params, vae_params


def jaxpr_equations(jaxpr, stack: str = ""):
  """(equation, name stack) of every equation of `jaxpr`, the bodies of scans, pjits and
  custom_vjps included (their stacks joined by '|')."""
  found = []
  for eqn in jaxpr.eqns:
    where = stack + str(eqn.source_info.name_stack)
    found.append((eqn, where))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else (param,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          found.extend(jaxpr_equations(inner, where + "|"))
  return found


def loss_setup():
  """Jitted (value_and_grad, loss) of the tiny stage-2 loss with perturbed parameters (llm2vae
  starts at zero), pixel losses only for t <= 0.8, as functions of (batch, rng)."""
  cfg = config(2)
  with cfg.unlocked():
    cfg.train.pixel_loss_max_t = 0.8  # some slots without pixel losses
  model, vae, params, vae_params = perturbed_models(cfg)
  loss_fn = step_lib.make_loss_fn(model, vae, cfg.model, cfg.train)
  value_and_grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  loss_only = jax.jit(loss_fn)
  return dict(
    value_and_grad=lambda batch, rng: value_and_grad(params, vae_params, batch, rng),
    loss=lambda batch, rng: (loss_only(params, vae_params, batch, rng), {}),
  )
