r"""Ahead-of-time memory check of the sharded train step: compiles the step the trainer runs
from abstract shapes only (no parameter is ever allocated) and prints the per-device bytes of
XLA's `memory_analysis()` beside the worked budget of docs/scale.md (`launch/memory_budget.py`).

  # 8 fake CPU devices (any machine; ~40 s and 2 GB of RAM for the 7B):
  python -m launch.compile_check --config=configs/unimedvl_7b_stage2.py --local_devices=8
  # a TPU topology from a CPU machine, as MaxText's train_compile does (needs libtpu):
  python -m launch.compile_check --config=configs/unimedvl_7b_stage2.py:mesh=1x-1x1 \
      --topology=v5p:2x2x2

The last line is `per_device_gib=<x>`: the compiled per-device peak (arguments + temporaries +
outputs not aliased to the donated state).
"""

from __future__ import annotations

import jax
import numpy as np
from absl import flags

from launch import cli, distributed
from launch import memory_budget as budget_lib
from medq_jax.train.timing import print_table

_CONFIG = cli.define_config_file("config", "configs/unimedvl_7b_stage2.py", "Config file.")
_TOPOLOGY = flags.DEFINE_string(
  "topology",
  "",
  "Compile for this TPU topology (e.g. v5p:2x2x2, v5e:2x4) through libtpu instead of the local "
  "devices; the mesh must use all of its chips.",
)
flags.adopt_module_key_flags(distributed)

GIB = budget_lib.GIB


def main(argv):
  del argv
  distributed.initialize()
  config = _CONFIG.value
  devices = budget_lib.topology_devices(_TOPOLOGY.value) if _TOPOLOGY.value else None
  try:
    budget, memory, seconds, step = budget_lib.check(config, devices)
  except ValueError as error:  # a mesh the devices cannot fill, a batch it cannot split, ...
    raise SystemExit(
      f"compile_check: {error} (8 fake CPU devices: --local_devices=8; a TPU slice: --topology)"
    ) from None
  llm = config.model.llm
  print(
    f"size={config.model.size} stage={config.train.stage} scope={config.model.expert_scope} "
    f"mesh={dict(step.mesh.shape)} platform={step.mesh.devices.flat[0].platform} "
    f"layers={llm.num_layers} batch={config.train.batch_size} "
    f"rows/device={budget_lib.rows_per_device(config, step.mesh)} "
    f"tokens/row={step.spec.row_und_len + step.spec.row_gen_len} "
    f"examples/row={step.spec.examples_per_row} dtype={config.model.dtype} "
    f"remat={config.model.remat_policy} attention={config.model.attention_impl} "
    f"compile_s={seconds:.1f}"
  )
  print_table(["per device", "worked GiB", "compiled GiB"], budget_lib.table(budget, memory))
  if step.loop_init_problem:
    moments = jax.tree_util.tree_leaves(step.state.opt_state)
    extra = sum(leaf.size * np.dtype(leaf.dtype).itemsize for leaf in moments) - budget.moments
    print(
      f"note: loop.py's init (jit(create_train_state)) {step.loop_init_problem}; replicated "
      f"AdamW moments would add {extra / GIB:.2f} GiB per device to this table"
    )
  print(f"per_device_gib={budget_lib.compiled_peak(memory) / GIB:.3f}")


def run_main():
  cli.run(main)


if __name__ == "__main__":
  run_main()
