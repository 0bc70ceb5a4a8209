r"""Benchmark of MedQ-Engine's exact retrieval: cosine top-k of prototypes against a pool read
from the memory-mapped pool store, ours (`medq_jax.engine.retrieval.top_k_cosine`, what the
engine runs) against faiss-cpu `IndexFlatIP` in the same process.

  nice python -m launch.bench_retrieval --config.pool_size=1000000

The pool (seeded Gaussian rows, norms varied; config.pool_dir, reused when it already holds the same
rows, so a killed build resumes) is written once through `PoolWriter`. Then, after one warm-up
of each (compilation, page cache), the best of config.repeats runs of:
  * ours: top_k_cosine(prototypes, PoolStore(pool_dir), k): the store streamed in chunks
    through the jitted matmul + running top-k, on every local device;
  * faiss: the same store read into an IndexFlatIP (rows L2-normalised, added shard by shard)
    and searched with the normalised prototypes: "faiss total" (read + add + search, the same
    job as ours) and "faiss search" (an index already in memory).
Peak memory is the peak resident set (`resource.getrusage` ru_maxrss) during each method,
reset before each (Linux /proc/self/clear_refs), minus the resident set before it.
Both results are compared (rows and scores). The table's last line times the failure
clustering as the engine runs it (`clustering_time`: text embedding, joined features, Ward tree,
k by silhouette) on config.cluster_failures synthetic failures with planted clusters. The last
line is `retrieval_vs_faiss=<our time / faiss total time>` (target <= 1.0).
"""

import os
import resource
import sys
import time

import numpy as np
from absl import logging

from launch import cli

_CONFIG = cli.define_config_file("config", "configs/bench_retrieval.py", "Benchmark config.")


def _rss_kib() -> int:
  with open("/proc/self/status") as handle:
    for line in handle:
      if line.startswith("VmRSS:"):
        return int(line.split()[1])
  return 0


def _reset_peak() -> int:
  """Resets the peak resident set (Linux); returns the resident set now, KiB."""
  try:
    with open("/proc/self/clear_refs", "w") as handle:
      handle.write("5")
  except OSError:
    logging.warning("cannot reset the peak RSS: peaks include earlier phases")
  return _rss_kib()


def _peak_mib(before_kib: int) -> float:
  return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kib) / 1024


def _pool_rows(start: int, stop: int, dim: int, seed: int) -> np.ndarray:
  """Rows [start, stop) of the seeded pool: Gaussian, every 7th row scaled (norms vary)."""
  rng = np.random.default_rng([seed, start])
  rows = rng.standard_normal((stop - start, dim), dtype=np.float32)
  rows[(np.arange(start, stop) % 7) == 0] *= 4.0
  return rows


def build_pool(pool_dir: str, size: int, dim: int, shard_rows: int, seed: int):
  """Writes the seeded pool shard by shard (resuming a partial one); returns its PoolStore."""
  from medq_jax.engine.pool_store import PoolStore, PoolWriter

  writer = PoolWriter(pool_dir, dim, f"bench-gaussian-seed{seed}", shard_rows=shard_rows)
  done = len(writer.done_ids())  # rows [0, done) are committed: they were written in order
  for start in range(done - done % shard_rows, size, shard_rows):
    stop = min(start + shard_rows, size)
    rows = _pool_rows(start, start + shard_rows, dim, seed)[max(done - start, 0) : stop - start]
    writer.add(rows, [f"row{i:08d}" for i in range(max(start, done), stop)])
  writer.close()
  store = PoolStore(pool_dir)
  if len(store) != size:
    raise ValueError(
      f"--config.pool_dir={pool_dir}: holds {len(store)} rows, not --config.pool_size={size}"
    )
  return store


def _prototypes(store, count: int, dim: int, seed: int) -> np.ndarray:
  """Half random directions, half pool rows plus noise (so that the top-k holds real matches)."""
  rng = np.random.default_rng(seed + 1)
  prototypes = rng.standard_normal((count, dim), dtype=np.float32)
  rows = rng.choice(len(store), count // 2, replace=False)
  for j, row in enumerate(sorted(rows)):
    prototypes[j] = store.read_rows(int(row), int(row) + 1)[0] + 0.5 * prototypes[j]
  return prototypes


def faiss_search(store, prototypes: np.ndarray, k: int, read_rows: int):
  """(scores, rows, seconds to build, seconds to search): IndexFlatIP over the normalised pool."""
  import faiss

  start = time.perf_counter()
  index = faiss.IndexFlatIP(store.dim)
  for _, chunk in store.iter_chunks(read_rows):
    chunk = np.array(chunk, np.float32)
    faiss.normalize_L2(chunk)
    index.add(chunk)
  built = time.perf_counter()
  queries = np.array(prototypes, np.float32)
  faiss.normalize_L2(queries)
  scores, rows = index.search(queries, k)
  return scores, rows, built - start, time.perf_counter() - built


def synthetic_failures(count: int, dim: int, planted: int, seed: int):
  """`count` failures in `planted` groups: visual rows around a group centre, and question +
  answer texts drawn from the group's own words (the engine's failure inputs, sized at will)."""
  rng = np.random.default_rng([seed, 2])
  groups = rng.integers(0, planted, count)
  centres = rng.standard_normal((planted, dim), dtype=np.float32)
  visual = centres[groups] + 0.5 * rng.standard_normal((count, dim), dtype=np.float32)
  words = [[f"g{g}w{w}" for w in range(12)] for g in range(planted)]
  texts = [" ".join(rng.choice(words[g], 6)) for g in groups]
  return visual, texts, groups


def clustering_time(count: int, dim: int, k_range, planted: int, seed: int):
  """(seconds, peak MiB above the start, chosen k) of one engine clustering of `count` failures."""
  from medq_jax.engine import clustering

  visual, texts, _ = synthetic_failures(count, dim, planted, seed)
  before = _reset_peak()
  start = time.perf_counter()
  text = clustering.text_embedding(texts, dim=64, seed=seed)
  features = clustering.failure_features(visual, text)
  result = clustering.cluster(features, visual_dim=dim, k_range=tuple(k_range), seed=seed)
  return time.perf_counter() - start, _peak_mib(before), result.n_clusters


def _cluster_line() -> str:
  """The table line of the failure clustering ("" when config.cluster_failures is 0)."""
  c = _CONFIG.value
  if not c.cluster_failures:
    return ""
  k_range = (c.cluster_k_min, c.cluster_k_max)
  seconds, peak, k = clustering_time(c.cluster_failures, c.dim, k_range, c.cluster_planted, c.seed)
  return (
    f"| clustering {c.cluster_failures} failures ({c.dim}-d image + 64-d text, Ward, k by "
    f"silhouette in {k_range[0]}..{k_range[1]}: k={k}, {c.cluster_planted} planted) | "
    f"{seconds:.3f} | {peak:.0f} |"
  )


def _best(function, repeats: int):
  """(best seconds, peak MiB above the start, results) over `repeats` timed calls."""
  times, peak, results = [], 0.0, []
  for _ in range(repeats):
    before = _reset_peak()
    start = time.perf_counter()
    results.append(function())
    times.append(time.perf_counter() - start)
    peak = max(peak, _peak_mib(before))
  return min(times), peak, results


def main(argv):
  from medq_jax.engine.pool_store import PoolError

  try:
    run(argv)
  except (PoolError, ValueError) as error:
    sys.stderr.write(f"FATAL bench_retrieval: {error}\n")
    sys.exit(1)


def run(argv):
  del argv
  import jax

  from medq_jax.engine import retrieval

  size, dim = _CONFIG.value.pool_size, _CONFIG.value.dim
  pool_dir = _CONFIG.value.pool_dir or os.path.join("runs", "bench_retrieval", f"pool_{size}x{dim}")
  start = time.perf_counter()
  store = build_pool(pool_dir, size, dim, _CONFIG.value.shard_rows, _CONFIG.value.seed)
  print(
    f"pool: {len(store)} x {dim} float32 ({len(store) * dim * 4 / 2**30:.2f} GiB) in "
    f"{len(store.shards)} shards under {pool_dir} ({time.perf_counter() - start:.1f} s)"
  )
  prototypes = _prototypes(store, _CONFIG.value.prototypes, dim, _CONFIG.value.seed)
  k, repeats = _CONFIG.value.k, _CONFIG.value.repeats
  mesh = retrieval.pool_mesh()
  ours = lambda: retrieval.top_k_cosine(prototypes, store, k, _CONFIG.value.chunk_rows, mesh)
  start = time.perf_counter()
  ours()
  first = time.perf_counter() - start
  our_time, our_peak, results = _best(ours, repeats)
  our_scores, our_rows = results[-1]

  try:
    import faiss
  except ImportError:
    print("faiss is not installed (pip install faiss-cpu): no comparison")
    print(f"ours: {our_time:.3f} s, peak +{our_peak:.0f} MiB")
    print(_cluster_line())
    return
  run_faiss = lambda: faiss_search(store, prototypes, k, _CONFIG.value.chunk_rows)
  run_faiss()
  faiss_time, faiss_peak, results = _best(run_faiss, repeats)
  faiss_scores, faiss_rows, build_s, search_s = results[-1]
  search_time = min(result[3] for result in results)
  same_rows = float((our_rows == faiss_rows).mean())
  max_diff = float(np.abs(our_scores - faiss_scores).max())

  print(
    f"{len(prototypes)} prototypes, top-{k}, best of {repeats} runs after a warm-up; "
    f"{jax.device_count()} {jax.devices()[0].platform} device(s), "
    f"faiss {faiss.__version__} with {faiss.omp_get_max_threads()} threads"
  )
  print("| method | seconds | peak RSS above start (MiB) |")
  print("|---|---|---|")
  print(
    f"| ours (store streamed, chunks of {_CONFIG.value.chunk_rows}) | {our_time:.3f} "
    f"(first call {first:.3f}, compiles) | {our_peak:.0f} |"
  )
  print(
    f"| faiss IndexFlatIP total (read + add + search) | {faiss_time:.3f} "
    f"(add {build_s:.3f}, search {search_s:.3f}) | {faiss_peak:.0f} |"
  )
  print(f"| faiss IndexFlatIP search only (index in memory) | {search_time:.3f} | - |")
  cluster_line = _cluster_line()
  if cluster_line:
    print(cluster_line)
  print(f"agreement: {same_rows:.6f} of the rows equal, max |score difference| {max_diff:.2e}")
  print(f"ours / faiss search only = {our_time / search_time:.3f}")
  print(f"retrieval_vs_faiss={our_time / faiss_time:.3f}")


def run_main():
  cli.run(main)


if __name__ == "__main__":
  run_main()
