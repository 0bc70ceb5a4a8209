r"""Per-host sharding check of the data loader: every JAX process reads one epoch of a split
through `data_pipeline.loader.make_loader` with no explicit shard arguments (so the shard comes
from jax.process_index()/process_count()) and writes the example ids it got.

  python -m launch.loader_shard_check --process_id=0 --num_processes=2 \
      --coordinator=127.0.0.1:PORT --data_dir=/tmp/medq_data --out_dir=/tmp/ids &
  python -m launch.loader_shard_check --process_id=1 --num_processes=2 \
      --coordinator=127.0.0.1:PORT --data_dir=/tmp/medq_data --out_dir=/tmp/ids
On a cluster run it on every host without --process_id/--num_processes/--coordinator; the ids
files of all hosts together must hold every example of the split exactly once.
"""

import json
import os

from launch.argv import flag


def main():
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  num_processes = int(flag("num_processes", "0") or 0)
  if num_processes > 1:
    jax.distributed.initialize(coordinator_address=flag("coordinator"),
                               num_processes=num_processes, process_id=int(flag("process_id")))
  elif num_processes == 0:
    jax.distributed.initialize()  # Cluster: addresses from the environment.
  from configs.data import medq_sample
  from data_pipeline import loader
  config = medq_sample.get_config(flag("config_arg", ""))
  config.data_dir = flag("data_dir", config.data_dir)
  split = flag("split", "train")
  iterator = iter(loader.make_loader(config, split, worker_count=0, batch_size=1, num_epochs=1,
                                     drop_remainder=False))
  ids = [str(batch["id"][0]) for batch in iterator]
  out_dir = flag("out_dir", ".")
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, f"ids_{jax.process_index()}.json"), "w") as f:
    json.dump({"process_index": jax.process_index(), "process_count": jax.process_count(),
               "ids": ids}, f)
  print(f"process {jax.process_index()}/{jax.process_count()}: {len(ids)} examples")


if __name__ == "__main__":
  main()
