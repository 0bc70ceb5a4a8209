"""Compile time of the full train step (model + frozen VAE losses + optimizer) at 2 vs 16 decoder
layers. With nn.scan the body compiles once, so the ratio should stay <= 1.5.

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


def train_step_compile_seconds(config, num_layers: int) -> float:
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.llm.num_layers = num_layers
  return train_step_seconds(config, iters=0)[0]


def main(argv):
  del argv
  distributed.initialize()
  config = _CONFIG.value
  depths = [int(x) for x in _LAYERS.value]
  times = [train_step_compile_seconds(config, depth) for depth in depths]
  print(
    f"size={config.model.size} scan_layers={config.model.scan_layers} "
    f"backend={jax.default_backend()}"
  )
  print_table(
    ["decoder layers", "train-step compile s", "ratio vs first"],
    [[d, t, t / times[0]] for d, t in zip(depths, times)],
  )
  print(
    f"compile ratio {depths[-1]} vs {depths[0]} layers: {times[-1] / times[0]:.3f} (target <= 1.5)"
  )


def run_main():
  cli.run(main)


if __name__ == "__main__":
  run_main()
