"""Compile time of the full train step (model + frozen VAE losses + optimizer) at 2 vs 16 decoder
layers. With nn.scan the body compiles once, so the ratio should stay <= 1.5.

  python -m launch.bench_compile --config=configs/medq_uni.py:size=small
"""

from absl import app, flags
from ml_collections import config_flags

import jax

from medq_jax import layout as layout_lib
from medq_jax.train import sharding as sharding_lib
from medq_jax.train import state as state_lib
from medq_jax.train import step as step_lib
from medq_jax.train.timing import compile_seconds, print_table

_CONFIG = config_flags.DEFINE_config_file("config", "configs/medq_uni.py:size=small,stage=2",
                                          "Config file.", lock_config=True)
_LAYERS = flags.DEFINE_list("layers", ["2", "16"], "Decoder depths to compare.")


def train_step_compile_seconds(config, num_layers: int) -> float:
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.llm.num_layers = num_layers
  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, config.train.stage)
  model, vae = state_lib.build_models(config.model)
  mesh = sharding_lib.make_mesh(config.mesh)
  params, vae_params, _, _ = state_lib.init_params_sharded(
      model, vae, spec, config.model, mesh, config.sharding_rules, jax.random.PRNGKey(0))
  optimizer = state_lib.make_optimizer(config.train, params)
  train_state = state_lib.create_train_state(params, optimizer)
  step = step_lib.make_train_step(model, vae, optimizer, config.model, config.train)
  batch = layout_lib.zeros_batch(spec, config.train.batch_size, state_lib.latent_dim(config.model))
  for key in ("gen_latents", "gen_timesteps"):
    batch.pop(key)
  with sharding_lib.mesh_context(mesh, config.sharding_rules):
    _, seconds = compile_seconds(jax.jit(step, donate_argnums=(0,)), train_state, vae_params,
                                 batch, jax.random.PRNGKey(1))
  return seconds


def main(argv):
  del argv
  config = _CONFIG.value
  depths = [int(x) for x in _LAYERS.value]
  times = [train_step_compile_seconds(config, depth) for depth in depths]
  print(f"size={config.model.size} scan_layers={config.model.scan_layers} "
        f"backend={jax.default_backend()}")
  print_table(["decoder layers", "train-step compile s", "ratio vs first"],
              [[d, t, t / times[0]] for d, t in zip(depths, times)])
  print(f"compile ratio {depths[-1]} vs {depths[0]} layers: {times[-1] / times[0]:.3f} "
        "(target <= 1.5)")


def run_main():
  app.run(main)


if __name__ == "__main__":
  run_main()
