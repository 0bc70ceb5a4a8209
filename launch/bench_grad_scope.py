r"""Benchmark of the stage-1 gradient scope: the train step that differentiates the trainable
(gen) subtree only (`medq_jax.train.step.make_train_step`) against the same loss with a full
gradient whose frozen updates are zeroed (optax `multi_transform` + `set_to_zero`, how the step
worked before). Same process, same zero batch, runs interleaved; prints XLA FLOPs, temp memory,
median step seconds of each, and the ratio.

  python -m launch.bench_grad_scope --config=configs/medq_uni.py:size=small,stage=1 --iters=8
"""

import statistics
import time

from absl import flags

from launch import cli, distributed

_CONFIG = cli.define_config_file(
  "config", "configs/medq_uni.py:size=small,stage=1", "Model config (stage 1)."
)
_ITERS = flags.DEFINE_integer("iters", 8, "Timed steps of each variant (interleaved).")
flags.adopt_module_key_flags(distributed)


def _full_gradient_step(setup, config):
  """The step as it was: full gradient, frozen parameters' updates set to zero."""
  import jax
  import optax

  from medq_jax.train import state as state_lib
  from medq_jax.train import step as step_lib

  adamw = optax.chain(
    optax.clip_by_global_norm(config.train.grad_clip_norm),
    optax.adamw(config.train.learning_rate, weight_decay=config.train.weight_decay),
  )
  labels = state_lib.trainable_labels(
    setup.params, config.train.stage, config.train.stage1_trainable
  )
  optimizer = optax.multi_transform({"train": adamw, "freeze": optax.set_to_zero()}, labels)
  loss_fn = step_lib.make_loss_fn(setup.model, setup.vae, config.model, config.train)

  def train_step(state, vae_params, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, vae_params, batch, rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return state_lib.TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step, optimizer


def main(argv):
  del argv
  distributed.initialize()
  import jax

  from medq_jax import layout as layout_lib
  from medq_jax.train import state as state_lib
  from medq_jax.train import step as step_lib
  from medq_jax.train.timing import compile_seconds, print_table
  from medq_jax.types import latent_dim

  config = _CONFIG.value
  # Layers unrolled: XLA's cost analysis counts a scanned loop's body once, so a scanned step
  # would show one layer of each stack in the GFLOP column.
  with config.unlocked():
    config.model.scan_layers = False
  setup = state_lib.build_setup(config, jax.random.key(0))
  batch = layout_lib.zeros_batch(setup.spec, config.train.batch_size, latent_dim(config.model))
  for key in ("gen_latents", "gen_timesteps"):
    batch.pop(key)
  rng = jax.random.key(1)
  scoped = step_lib.make_train_step(
    setup.model, setup.vae, setup.optimizer, config.model, config.train
  )
  variants = {
    "full gradient, frozen updates zeroed": _full_gradient_step(setup, config),
    "gradient of the trainable subtree": (scoped, setup.optimizer),
  }
  runs, rows = {}, []
  for name, (step, optimizer) in variants.items():
    state = state_lib.create_train_state(setup.params, optimizer)
    compiled, seconds = compile_seconds(jax.jit(step), state, setup.vae_params, batch, rng)
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    memory = compiled.memory_analysis()
    runs[name] = (compiled, state)
    rows.append(
      [name, seconds, analysis.get("flops", 0.0) / 1e9, memory.temp_size_in_bytes / 2**20]
    )
  times = {name: [] for name in runs}
  for compiled, state in runs.values():
    jax.block_until_ready(compiled(state, setup.vae_params, batch, rng))  # warm-up
  for _ in range(_ITERS.value):
    for name, (compiled, state) in runs.items():
      start = time.perf_counter()
      jax.block_until_ready(compiled(state, setup.vae_params, batch, rng))
      times[name].append(time.perf_counter() - start)
  for row in rows:
    row.append(statistics.median(times[row[0]]))
  print_table(["step", "compile s", "GFLOP", "temp MiB", "median step s"], rows)
  (_, _, full_flops, _, full_s), (_, _, scoped_flops, _, scoped_s) = rows
  print(f"flops_scoped_over_full={scoped_flops / full_flops:.3f}")
  print(f"step_time_scoped_over_full={scoped_s / full_s:.3f}")


def run_main():
  cli.run(main)


if __name__ == "__main__":
  run_main()
