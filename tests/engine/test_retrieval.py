"""Exact cosine top-k streamed from the pool store, against a NumPy brute force (ids and scores),
faiss IndexFlatIP when installed, and on a 4-device mesh in a subprocess."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from medq_jax.engine import retrieval
from medq_jax.engine.pool_store import PoolError, PoolStore, PoolWriter

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_pool(pool_dir, data, shard_rows=37):
  with PoolWriter(str(pool_dir), data.shape[1], "test-encoder", shard_rows=shard_rows) as writer:
    writer.add(data, [f"img{i:05d}" for i in range(len(data))])
  return PoolStore(str(pool_dir))


def brute_force(prototypes, data, k):
  """NumPy oracle: float64 cosines, descending, ties to the lower row (lexsort)."""
  units = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)
  cosines = units(prototypes.astype(np.float64)) @ units(data.astype(np.float64)).T
  order = np.stack([np.lexsort((np.arange(len(data)), -row))[:k] for row in cosines])
  return np.take_along_axis(cosines, order, 1), order


def _pool(count=300, dim=24, seed=0):
  rng = np.random.default_rng(seed)
  data = rng.normal(size=(count, dim)).astype(np.float32)
  data[::7] *= 5.0  # norms differ: cosine, not the inner product, must rank
  prototypes = rng.normal(size=(5, dim)).astype(np.float32)
  prototypes[0] = data[42 % count] * 3.0  # a pool row is its own best match (cosine 1)
  return data, prototypes


@pytest.mark.parametrize("chunk_rows", [16, 64, 1000])
def test_equals_numpy_brute_force(tmp_path, chunk_rows):
  data, prototypes = _pool()
  store = make_pool(tmp_path, data)
  scores, rows = retrieval.top_k_cosine(prototypes, store, 10, chunk_rows=chunk_rows)
  want_scores, want_rows = brute_force(prototypes, data, 10)
  np.testing.assert_array_equal(rows, want_rows)
  np.testing.assert_allclose(scores, want_scores, atol=1e-6)
  assert rows[0, 0] == 42 and abs(scores[0, 0] - 1.0) < 1e-6


def test_threshold_ids_and_shards(tmp_path):
  data, prototypes = _pool()
  store = make_pool(tmp_path, data)
  result = retrieval.retrieve(prototypes, store, k=20, tau_sim=0.3, chunk_rows=64)
  want_scores, want_rows = brute_force(prototypes, data, 20)
  for j, hits in enumerate(result.hits):
    expected = [int(r) for r, s in zip(want_rows[j], want_scores[j]) if s > 0.3]
    assert [hit.row for hit in hits] == expected
    assert [hit.id for hit in hits] == [f"img{r:05d}" for r in expected]
    assert [hit.shard for hit in hits] == [f"shard-p000-{r // 37:05d}" for r in expected]
    assert all(hit.score > 0.3 for hit in hits)
  assert 0 < sum(map(len, result.hits)) < 100  # the threshold cut some, not all


def test_ties_go_to_the_lower_row_and_zero_rows_score_zero(tmp_path):
  rng = np.random.default_rng(1)
  data = rng.normal(size=(50, 8)).astype(np.float32)
  data[[3, 17, 40]] = data[30]  # four identical rows: bit-identical cosines
  data[5] = 0.0
  store = make_pool(tmp_path, data, shard_rows=11)
  prototypes = np.stack([data[30], -data[30]])
  scores, rows = retrieval.top_k_cosine(prototypes, store, 4, chunk_rows=8)
  assert rows[0].tolist() == [3, 17, 30, 40]
  assert len(set(scores[0].tolist())) == 1
  zero = np.zeros((1, 8), np.float32)
  zero[0, 0] = 1.0
  scores, rows = retrieval.top_k_cosine(zero, store, 50, chunk_rows=8)
  assert scores[0][rows[0] == 5] == 0.0


def test_k_above_pool_size_is_capped(tmp_path):
  data, prototypes = _pool(count=9)
  store = make_pool(tmp_path, data, shard_rows=4)
  scores, rows = retrieval.top_k_cosine(prototypes, store, 50, chunk_rows=4)
  assert rows.shape == (5, 9) and sorted(rows[1].tolist()) == list(range(9))
  np.testing.assert_allclose(scores, brute_force(prototypes, data, 9)[0], atol=1e-6)


def test_bad_inputs(tmp_path):
  with pytest.raises(PoolError, match="the pool is empty"):
    retrieval.top_k_cosine(np.ones((2, 8), np.float32), PoolStore(str(tmp_path)), 3)
  data, prototypes = _pool()
  store = make_pool(tmp_path / "p", data)
  with pytest.raises(PoolError, match="pool embeddings have dimension 24 .*prototypes have 12"):
    retrieval.top_k_cosine(prototypes[:, :12], store, 3)
  with pytest.raises(ValueError, match="every prototype must be finite and non-zero"):
    retrieval.top_k_cosine(np.zeros((1, 24), np.float32), store, 3)
  with pytest.raises(ValueError, match=r"prototypes: expected \[P >= 1, D\]"):
    retrieval.top_k_cosine(prototypes[0], store, 3)
  with pytest.raises(ValueError, match="tau_sim: expected a cosine in"):
    retrieval.retrieve(prototypes, store, 3, tau_sim=1.5)


def test_nan_row_in_a_shard_fails_naming_it(tmp_path):
  data, prototypes = _pool()
  store = make_pool(tmp_path, data)
  corrupt = np.load(store.shards[3].npy_path, mmap_mode="r+")  # rows 111..147
  corrupt[5, 2] = np.nan
  corrupt.flush()
  del corrupt
  with pytest.raises(
    PoolError, match=r"shard-p000-00003\.npy: embedding of 'img00116' \(pool row 116\)"
  ):
    retrieval.top_k_cosine(prototypes, PoolStore(str(tmp_path)), 5, chunk_rows=64)


def test_equals_faiss_index_flat_ip(tmp_path):
  faiss = pytest.importorskip("faiss")
  data, prototypes = _pool(count=500, dim=32, seed=3)
  store = make_pool(tmp_path, data, shard_rows=100)
  scores, rows = retrieval.top_k_cosine(prototypes, store, 15, chunk_rows=128)
  units = data / np.linalg.norm(data, axis=1, keepdims=True)
  index = faiss.IndexFlatIP(32)
  index.add(units)
  queries = prototypes / np.linalg.norm(prototypes, axis=1, keepdims=True)
  faiss_scores, faiss_rows = index.search(queries, 15)
  np.testing.assert_array_equal(rows, faiss_rows)
  np.testing.assert_allclose(scores, faiss_scores, atol=1e-5)


_MESH_SCRIPT = r"""
import sys, numpy as np, jax
sys.path.insert(0, {repo!r})
from medq_jax.engine import retrieval
from medq_jax.engine.pool_store import PoolStore
assert jax.device_count() == 4, jax.devices()
store = PoolStore({pool!r})
mesh = retrieval.pool_mesh()
scores, rows = retrieval.top_k_cosine(np.load({protos!r}), store, 10, chunk_rows=50, mesh=mesh)
step = retrieval._chunk_step(mesh, 10, 52, store.dim, 5)
chunk = retrieval._global_chunk(mesh, store.read_rows(0, 52), 52)
print("SHARDS", len(chunk.addressable_shards), chunk.addressable_shards[0].data.shape[0])
np.save({out!r}, np.concatenate([scores, rows.astype(np.float32)]))
"""


def test_four_devices_in_a_subprocess(tmp_path, subprocess_env):
  data, prototypes = _pool(count=301)
  store = make_pool(tmp_path / "pool", data)
  np.save(tmp_path / "protos.npy", prototypes)
  script = _MESH_SCRIPT.format(
    repo=REPO,
    pool=store.pool_dir,
    protos=str(tmp_path / "protos.npy"),
    out=str(tmp_path / "out.npy"),
  )
  env = subprocess_env(devices=4)
  done = subprocess.run(
    [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert "SHARDS 4 13" in done.stdout  # 52 rows (50 rounded up to 4 devices) split 13 a device
  out = np.load(tmp_path / "out.npy")
  want_scores, want_rows = brute_force(prototypes, data, 10)
  np.testing.assert_array_equal(out[5:].astype(np.int64), want_rows)
  np.testing.assert_allclose(out[:5], want_scores, atol=1e-6)


def test_in_process_mesh_uses_every_device(tmp_path):
  data, prototypes = _pool()
  store = make_pool(tmp_path, data)
  mesh = retrieval.pool_mesh()
  assert mesh.devices.size == jax.device_count()
  assert retrieval.round_chunk_rows(10, mesh) % jax.device_count() == 0
  scores, rows = retrieval.top_k_cosine(prototypes, store, 7, chunk_rows=10, mesh=mesh)
  np.testing.assert_array_equal(rows, brute_force(prototypes, data, 7)[1])
