"""The MedQ-Engine retrieval benchmark (`python -m launch.bench_retrieval`, docs/engine.md):
exact top-k of `prototypes` queries over a seeded pool of `pool_size` x `dim` float32 rows,
ours against faiss-cpu IndexFlatIP, and the failure clustering's time for `cluster_failures`
failures. Override any key: --config.pool_size=10000."""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  config.pool_size = 1_000_000  # pool rows
  config.dim = 512  # embedding dimension
  config.prototypes = 64  # queries
  config.k = 256  # top-k per prototype
  config.chunk_rows = 65536  # pool rows per streamed chunk (ours)
  config.shard_rows = 131072  # rows per pool shard on disk
  config.repeats = 3  # timed runs of each method (the best counts)
  config.pool_dir = ""  # empty: runs/bench_retrieval/pool_<size>x<dim>
  config.seed = 0  # seed of the pool and prototypes
  # Failure clustering as the engine runs it (engine/clustering.py: TF-IDF/SVD text, joined
  # features, Ward tree, k by silhouette): this many synthetic failures (0: skip), their visual
  # part `dim` wide, k in [cluster_k_min, cluster_k_max], planted clusters.
  config.cluster_failures = 10_000
  config.cluster_k_min = 2
  config.cluster_k_max = 20
  config.cluster_planted = 8
  return config
