r"""`medq-profile`: where one train step's time goes, on the step and batches `medq-train` runs.

  medq-profile --config=configs/medq_uni.py:size=small,stage=2 --steps=10
  medq-profile --config=configs/medq_uni.py:size=base,stage=2 --config.train.precision=bf16 \
      --config.train.peak_tflops_per_device=989 --trace_dir=runs/profile/trace
  medq-profile ... --batches=synthetic    # no data stack (TorchIO/Grain/TFDS) on the machine

Prepares the dataset and tokenizer as medq-train does (under --workdir), runs warm-up and timed
steps of the real jitted step, writes a jax.profiler trace (open it in TensorBoard's profile tab
or Perfetto), and prints step time, tokens/s, examples/s, the data-wait fraction, FLOPs per step
(XLA's cost analysis and the analytic count), the matmul peak measured in this process, a table of
the step's parts, and as its last line `mfu=<fraction>` (XLA FLOP/s over the measured peak;
`mfu_datasheet=` above it when train.peak_tflops_per_device is set). With --batches=synthetic the
same packer makes the rows from in-memory examples and a tokenizer is trained on their texts.
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
_WRITE_TRACE = flags.DEFINE_bool("trace", True, "Write the jax.profiler trace of the timed steps.")
_BATCHES = flags.DEFINE_enum(
  "batches",
  "loader",
  ["loader", "synthetic"],
  "The trainer's data loader, or packed in-memory rows.",
)
flags.adopt_module_key_flags(distributed)


def main(argv):
  del argv
  distributed.initialize()
  from medq_jax.train.profiling import print_profile, profile_training, synthetic_tokenizer

  config = _CONFIG.value
  if _BATCHES.value == "synthetic":
    tokenizer_dir = synthetic_tokenizer(config, _WORKDIR.value)
  else:
    from launch import prepare

    tokenizer_dir = prepare.prepare_training(config, _WORKDIR.value)
  trace_dir = (
    (_TRACE.value or os.path.join(_WORKDIR.value, "trace")) if _WRITE_TRACE.value else None
  )
  profile = profile_training(
    config,
    tokenizer_dir,
    steps=_STEPS.value,
    warmup=_WARMUP.value,
    trace_dir=trace_dir,
    batches=_BATCHES.value,
  )
  print_profile(profile, config)


def run_main():
  cli.run(main)


if __name__ == "__main__":
  run_main()
