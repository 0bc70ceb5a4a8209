r"""Precomputes the MedQ-UNI data into ArrayRecord shards (resumable) and prints the manifest.

  python -m launch.precompute --config=configs/data/medq_sample.py \
      --config.data_dir=/tmp/medq_data --config.num_workers=2
Rerunning the same command after an interruption continues with the unfinished shards.
"""

import json
import logging as std_logging

from absl import logging

from data_pipeline import precompute
from launch import cli

_CONFIG = cli.define_config_file("config", "configs/data/medq_sample.py", "Data config file.")


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  std_logging.getLogger().setLevel(std_logging.INFO)
  manifest = precompute.run_precompute(_CONFIG.value, progress=True)
  summary = {
    key: manifest[key]
    for key in (
      "name",
      "version",
      "source",
      "image_size",
      "num_examples",
      "counts",
      "shard_lengths",
    )
  }
  summary["skipped"] = {
    "count": manifest["skipped"]["count"],
    "reasons": manifest["skipped"]["reasons"],
  }
  print(json.dumps(summary, indent=1))


def run_main():
  cli.run(main)


if __name__ == "__main__":
  run_main()
