"""Compile time of the full train step (model + frozen VAE losses + optimizer) at 2 vs 16 decoder
layers, with the layer stack a rolled loop and unrolled (`model.scan_unroll`; the layers' params
are stacked either way). Rolled, the body compiles once, so its ratio should stay <= 1.5; the
unrolled stack (the `tiny`/`small` default, docs/training.md) compiles every layer.

  python -m launch.bench_compile --config=configs/medq_uni.py:size=small
"""

import jax
from absl import flags

from launch import cli, distributed
from medq_jax.train.measure import train_step_seconds
from medq_jax.train.timing import print_table

_CONFIG = cli.define_config_file("config", "configs/medq_uni.py:size=small,stage=2", "Config file.")
_LAYERS = flags.DEFINE_list("layers", ["2", "16"], "Decoder depths to compare.")
flags.adopt_module_key_flags(distributed)


def train_step_compile_seconds(config, num_layers: int, unroll: bool) -> float:
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.llm.num_layers = num_layers
    config.model.scan_unroll = unroll
  return train_step_seconds(config, iters=0)[0]


def main(argv):
  del argv
  distributed.initialize()
  config = _CONFIG.value
  depths = [int(x) for x in _LAYERS.value]
  rolled = [train_step_compile_seconds(config, depth, False) for depth in depths]
  unrolled = [train_step_compile_seconds(config, depth, True) for depth in depths]
  print(
    f"size={config.model.size} scan_layers={config.model.scan_layers} "
    f"scan_unroll={config.model.scan_unroll} (configured) backend={jax.default_backend()}"
  )
  print_table(
    ["decoder layers", "rolled loop: compile s", "ratio", "unrolled: compile s", "ratio"],
    [[d, r, r / rolled[0], u, u / unrolled[0]] for d, r, u in zip(depths, rolled, unrolled)],
  )
  print(
    f"unrolled compile ratio {depths[-1]} vs {depths[0]} layers: {unrolled[-1] / unrolled[0]:.3f}"
  )
  print(
    f"rolled compile ratio {depths[-1]} vs {depths[0]} layers: {rolled[-1] / rolled[0]:.3f} "
    "(target <= 1.5)"
  )


def run_main():
  cli.run(main)


if __name__ == "__main__":
  run_main()
