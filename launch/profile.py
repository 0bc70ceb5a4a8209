r"""`medq-profile`: where one train step's time goes, on the step and batches `medq-train` runs.

  medq-profile --config=configs/medq_uni.py:size=small,stage=2 --steps=10
  medq-profile --config=configs/medq_uni.py:size=base,stage=2 --config.model.dtype=bfloat16 \
      --trace_dir=runs/profile/trace

Prepares the dataset and tokenizer as medq-train does (under --workdir), runs warm-up and timed
steps of the real jitted step, writes a jax.profiler trace (open it in TensorBoard's profile tab
or Perfetto), and prints step time, tokens/s, examples/s, the data-wait fraction, FLOPs per step
(XLA's cost analysis and the analytic count), the matmul peak measured in this process, a table of
the step's parts, and as its last line `mfu=<fraction>` (XLA FLOP/s over the measured peak).
docs/training.md "Profiling a step".
"""

import os

from absl import flags

from launch import cli, distributed

_CONFIG = cli.define_config_file("config", "configs/medq_uni.py:size=small,stage=2", "Config.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/profile", "Where the tokenizer is prepared.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps.", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first.", lower_bound=0)
_TRACE = flags.DEFINE_string(
  "trace_dir", "", "jax.profiler trace directory (empty: workdir/trace)."
)
flags.adopt_module_key_flags(distributed)


def main(argv):
  del argv
  distributed.initialize()
  from launch import prepare
  from medq_jax.train.profiling import print_profile, profile_training

  config = _CONFIG.value
  tokenizer_dir = prepare.prepare_training(config, _WORKDIR.value)
  trace_dir = _TRACE.value or os.path.join(_WORKDIR.value, "trace")
  profile = profile_training(
    config, tokenizer_dir, steps=_STEPS.value, warmup=_WARMUP.value, trace_dir=trace_dir
  )
  print_profile(profile, config)


def run_main():
  cli.run(main)


if __name__ == "__main__":
  run_main()
