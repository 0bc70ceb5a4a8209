"""Retrieval across two JAX processes (2 CPU devices each, jax.distributed on 127.0.0.1): each
process reads only its slice of every chunk, and both get the NumPy brute force's top-k."""

import os
import subprocess
import sys

import numpy as np

from medq_jax.engine.pool_store import PoolStore, PoolWriter

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SCRIPT = r"""
import sys
import numpy as np
import jax
jax.distributed.initialize(coordinator_address={address!r}, num_processes=2, process_id={index})
sys.path.insert(0, {repo!r})
from medq_jax.engine import pool_store, retrieval
assert jax.device_count() == 4 and jax.local_device_count() == 2
store = pool_store.PoolStore({pool!r})
reads = []
read_rows = store.read_rows
store.read_rows = lambda start, stop: reads.append((start, stop)) or read_rows(start, stop)
scores, rows = retrieval.top_k_cosine(np.load({protos!r}), store, 9, chunk_rows=40)
print("READS", reads)
np.save({out!r}, np.concatenate([scores, rows.astype(np.float32)]))
"""


def _brute_force(prototypes, data, k):
  units = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  cosines = units(prototypes.astype(np.float64)) @ units(data.astype(np.float64)).T
  order = np.stack([np.lexsort((np.arange(len(data)), -row))[:k] for row in cosines])
  return np.take_along_axis(cosines, order, 1), order


def test_two_processes_agree_with_brute_force(tmp_path, free_port, subprocess_env):
  rng = np.random.default_rng(0)
  data = rng.normal(size=(130, 16)).astype(np.float32)
  prototypes = rng.normal(size=(3, 16)).astype(np.float32)
  with PoolWriter(str(tmp_path / "pool"), 16, "test", shard_rows=50) as writer:
    writer.add(data, [f"img{i}" for i in range(130)])
  np.save(tmp_path / "protos.npy", prototypes)
  env = subprocess_env(devices=2)
  procs = []
  for index in range(2):
    script = _SCRIPT.format(
      address=f"127.0.0.1:{free_port}",
      index=index,
      repo=REPO,
      pool=str(tmp_path / "pool"),
      protos=str(tmp_path / "protos.npy"),
      out=str(tmp_path / f"out{index}.npy"),
    )
    procs.append(
      subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )
    )
  outputs = [proc.communicate(timeout=180) for proc in procs]
  for proc, (_, stderr) in zip(procs, outputs):
    assert proc.returncode == 0, stderr[-3000:]
  # Chunks of 40 rows: process 0 reads rows [0, 20) of each, process 1 rows [20, 40).
  assert "READS [(0, 20), (40, 60), (80, 100), (120, 130)]" in outputs[0][0]
  assert "READS [(20, 40), (60, 80), (100, 120), (130, 130)]" in outputs[1][0]
  want_scores, want_rows = _brute_force(prototypes, data, 9)
  for index in range(2):
    out = np.load(tmp_path / f"out{index}.npy")
    np.testing.assert_array_equal(out[3:].astype(np.int64), want_rows)
    np.testing.assert_allclose(out[:3], want_scores, atol=1e-6)
  assert len(PoolStore(str(tmp_path / "pool"))) == 130
