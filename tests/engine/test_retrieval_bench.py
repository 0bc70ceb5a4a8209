"""launch/bench_retrieval.py at 10K rows: the table, both methods agreeing, the last line; the
pool is built once, resumed and grown, and a pool of another size is one FATAL line."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from medq_jax.engine.pool_store import PoolStore

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = [
  "--config.dim=32",
  "--config.prototypes=8",
  "--config.k=10",
  "--config.repeats=1",
  "--config.chunk_rows=4096",
  "--config.cluster_failures=300",
  "--config.cluster_k_max=8",
  "--config.cluster_planted=4",
]


def _bench(env, *args):
  return subprocess.run(
    [sys.executable, "-m", "launch.bench_retrieval", *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_bench_at_10k_and_pool_reuse(tmp_path, subprocess_env):
  pytest.importorskip("faiss")
  pool = str(tmp_path / "pool")
  done = _bench(
    subprocess_env(),
    "--config.pool_size=10000",
    f"--config.pool_dir={pool}",
    "--config.shard_rows=3000",
    *SMALL,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  lines = done.stdout.strip().splitlines()
  assert re.fullmatch(r"retrieval_vs_faiss=\d+\.\d{3}", lines[-1]), lines[-1]
  assert float(lines[-1].split("=")[1]) > 0
  assert any(line.startswith("| ours (store streamed") for line in lines)
  assert any(line.startswith("| faiss IndexFlatIP total") for line in lines)
  clustered = next(line for line in lines if line.startswith("| clustering 300 failures"))
  assert "k=4, 4 planted" in clustered, clustered  # the planted clusters are found
  assert float(clustered.split("|")[2]) > 0
  agreement = next(line for line in lines if line.startswith("agreement:"))
  assert float(agreement.split()[1]) >= 0.99, agreement
  store = PoolStore(pool)
  assert len(store) == 10000 and store.dim == 32 and len(store.shards) == 4
  first = store.read_rows(0, 10000).copy()

  grown = _bench(
    subprocess_env(),
    "--config.pool_size=11000",
    f"--config.pool_dir={pool}",
    "--config.shard_rows=3000",
    *SMALL,
  )
  assert grown.returncode == 0, grown.stderr[-3000:]
  store = PoolStore(pool)
  assert len(store) == 11000 and store.ids[-1] == "row00010999"
  np.testing.assert_array_equal(store.read_rows(0, 10000), first)  # nothing rewritten

  fresh = str(tmp_path / "fresh")
  _bench(
    subprocess_env(),
    "--config.pool_size=11000",
    f"--config.pool_dir={fresh}",
    "--config.shard_rows=3000",
    *SMALL,
  )
  np.testing.assert_array_equal(PoolStore(fresh).read_rows(0, 11000), store.read_rows(0, 11000))

  smaller = _bench(subprocess_env(), "--config.pool_size=5000", f"--config.pool_dir={pool}", *SMALL)
  assert smaller.returncode == 1
  assert smaller.stderr.strip().splitlines()[-1] == (
    f"FATAL bench_retrieval: --config.pool_dir={pool}: holds 11000 rows, not --config.pool_size=5000"
  )
