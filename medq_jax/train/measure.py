"""Measures the full train step (model, frozen-VAE pixel losses, optimizer) of a config on
zero batches: compile seconds and median step seconds. Used by the benchmarks under launch/."""

from __future__ import annotations

import jax

from medq_jax import layout as layout_lib
from medq_jax import sharding as sharding_lib
from medq_jax.train import state as state_lib
from medq_jax.train import step as step_lib
from medq_jax.train.timing import compile_seconds, median_seconds
from medq_jax.types import latent_dim


def train_step_seconds(config, iters: int = 5) -> tuple[float, float]:
  """(compile s, median step s) of `config`'s jitted, sharded, donated train step.

  iters=0 only compiles (step s is then 0).
  """
  setup = state_lib.build_setup(config, jax.random.PRNGKey(0))
  spec, mesh, vae_params = setup.spec, setup.mesh, setup.vae_params
  train_state = state_lib.create_train_state(setup.params, setup.optimizer)
  step = step_lib.make_train_step(
    setup.model, setup.vae, setup.optimizer, config.model, config.train
  )
  batch = layout_lib.zeros_batch(spec, config.train.batch_size, latent_dim(config.model))
  for key in ("gen_latents", "gen_timesteps"):
    batch.pop(key)
  batch["gen_loss_mask"][:] = batch["gen_noised"][:] = 0
  rng = jax.random.PRNGKey(1)
  with sharding_lib.mesh_context(mesh, config.sharding_rules):
    compiled, compile_s = compile_seconds(jax.jit(step), train_state, vae_params, batch, rng)
  if not iters:
    return compile_s, 0.0
  run = lambda: compiled(train_state, vae_params, batch, rng)
  return compile_s, median_seconds(lambda: run()[1], warmup=1, iters=iters)
