"""Two JAX processes on 127.0.0.1 each read their own shard of the loader (sharded by
jax.process_index(), no explicit shard arguments): disjoint, and together the whole split."""

import json
import os
import subprocess
import sys

from data_pipeline import loader

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _ids(config, **kwargs):
  """Example ids of one epoch of the train split through the loader, in order."""
  batches = loader.make_loader(
    config, "train", worker_count=0, batch_size=1, num_epochs=1, drop_remainder=False, **kwargs
  )
  return [str(batch["id"][0]) for batch in batches]


def test_two_jax_processes_read_disjoint_shards_covering_the_split(
  free_port, built_sample, tmp_path, subprocess_env
):
  config, manifest = built_sample
  port = free_port
  env = subprocess_env()
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "launch.loader_shard_check",
        "--config=configs/data/medq_sample.py:runlocal",
        f"--config.data_dir={config.data_dir}",
        "--split=train",
        f"--out_dir={tmp_path}",
        f"--coordinator=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
      ],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  for proc in procs:
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
  shards = [json.loads((tmp_path / f"ids_{i}.json").read_text()) for i in range(2)]
  assert [s["process_index"] for s in shards] == [0, 1]
  assert all(s["process_count"] == 2 for s in shards)
  first, second = (shard["ids"] for shard in shards)
  assert first and second and not set(first) & set(second)
  expected = sorted(_ids(config, shuffle=False, shard_index=0, shard_count=1))
  assert sorted(first + second) == expected
  assert len(expected) == manifest["counts"]["split"]["train"]
  # Each process's shard is the one the explicit arguments give (same seed, same order).
  for index, ids in enumerate((first, second)):
    assert ids == _ids(config, shard_index=index, shard_count=2)
