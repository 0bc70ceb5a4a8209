"""Prints (or writes) the mesh PartitionSpec of every parameter of a config as JSON.

  python -m launch.dump_param_shardings --config=configs/medq_uni.py:size=small --out=specs.json

Regenerates tests/golden/small_param_specs.json after an intended change of the rules table.
"""

import json

from absl import flags

from launch import cli, distributed
from medq_jax.train.param_specs import param_partition_specs

_CONFIG = cli.define_config_file("config", "configs/medq_uni.py:size=small", "Model config file.")
_OUT = flags.DEFINE_string("out", "", "Write JSON here instead of stdout.")
flags.adopt_module_key_flags(distributed)


def main(argv):
  del argv
  distributed.initialize()
  text = json.dumps(param_partition_specs(_CONFIG.value), indent=1, sort_keys=True)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      f.write(text + "\n")
  else:
    print(text)


def run_main():
  cli.run(main)


if __name__ == "__main__":
  run_main()
