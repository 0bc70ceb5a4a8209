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


def print_profile(profile, config) -> None:
  from medq_jax.train.timing import print_table

  gflop = lambda x: x / 1e9
  print(
    f"config: size={config.model.size} stage={config.train.stage} "
    f"batch={config.train.batch_size} devices={config.mesh.shape}"
  )
  print_table(
    ["figure", "value"],
    [
      ["step seconds (median)", profile.step_seconds],
      ["examples / s", profile.examples_per_second],
      ["token positions / s (padding included)", profile.tokens_per_second],
      ["real tokens / s", profile.real_tokens_per_second],
      ["data-wait fraction", profile.data_wait_fraction],
      ["GFLOP / step (XLA cost analysis)", gflop(profile.xla_flops)],
      ["GFLOP / step (analytic: decoder, ViT, LM head; 3x forward)", gflop(profile.analytic_flops)],
      ["matmul peak GFLOP/s (this process)", gflop(profile.peak_flops_per_second)],
      ["achieved GFLOP/s (XLA)", gflop(profile.xla_flops / profile.step_seconds)],
    ],
  )
  print()
  total = sum(v for k, v in profile.parts.items() if not k.startswith(" "))
  print_table(
    ["part (timed as its own program)", "seconds", "share of step"],
    [[name, seconds, seconds / profile.step_seconds] for name, seconds in profile.parts.items()]
    + [["sum of parts", total, total / profile.step_seconds]],
  )
  if profile.trace_dir:
    print(f"trace: {profile.trace_dir}")
  print(f"mfu={profile.mfu:.4f}")


def main(argv):
  del argv
  distributed.initialize()
  from launch import prepare
  from medq_jax.train.profiling import profile_training

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
