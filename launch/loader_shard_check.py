r"""Per-host sharding check of the data loader: every JAX process reads one epoch of a split
through `data_pipeline.loader.make_loader` with no explicit shard arguments (so the shard comes
from jax.process_index()/process_count()) and writes the example ids it got.

  python -m launch.loader_shard_check --config=configs/data/medq_sample.py:runlocal \
      --config.data_dir=/tmp/medq_data --split=train --out_dir=/tmp/ids \
      --coordinator=127.0.0.1:PORT --num_processes=2 --process_id=0 &
  python -m launch.loader_shard_check --config=configs/data/medq_sample.py:runlocal \
      --config.data_dir=/tmp/medq_data --split=train --out_dir=/tmp/ids \
      --coordinator=127.0.0.1:PORT --num_processes=2 --process_id=1
On a cluster run it on every host with --distributed; the ids files of all hosts together must
hold every example of the split exactly once.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the loader needs no accelerator

import json

from absl import flags

from data_pipeline import loader
from launch import cli, distributed

_CONFIG = cli.define_config_file("config", "configs/data/medq_sample.py", "Data config file.")
_SPLIT = flags.DEFINE_string("split", "train", "Split to read.")
_OUT_DIR = flags.DEFINE_string("out_dir", ".", "Writes ids_<process_index>.json here.")
flags.adopt_module_key_flags(distributed)


def main(argv):
  del argv
  process_index, process_count = distributed.initialize()
  iterator = iter(
    loader.make_loader(
      _CONFIG.value, _SPLIT.value, worker_count=0, batch_size=1, num_epochs=1, drop_remainder=False
    )
  )
  ids = [str(batch["id"][0]) for batch in iterator]
  os.makedirs(_OUT_DIR.value, exist_ok=True)
  with open(os.path.join(_OUT_DIR.value, f"ids_{process_index}.json"), "w") as f:
    json.dump({"process_index": process_index, "process_count": process_count, "ids": ids}, f)
  print(f"process {process_index}/{process_count}: {len(ids)} examples")


def run_main():
  cli.run(main)


if __name__ == "__main__":
  run_main()
