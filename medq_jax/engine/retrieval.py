"""Exact cosine top-k of failure prototypes against the image pool (MedQ-Engine Eq. 2).

The pool is streamed from the memory-mapped store in chunks of `chunk_rows` rows; each chunk is
sharded by rows over a 1-D device mesh (axis "pool"; with several JAX processes each process
reads only its own slice of the chunk), and one jitted step per chunk

  scores = normalise(prototypes) @ normalise(chunk).T          [P, rows on this device]
  local top-k per device -> all-gather -> top-k of the chunk -> merged with the running top-k

keeps the best k rows per prototype, so memory is O(chunk + P * k) whatever the pool's size.
The matmul runs at `Precision.HIGHEST` (fp32 on every backend). Rows above the threshold are
those with cosine > tau_sim (strict, as in Eq. 2).

Ties: equal scores are ordered by pool row, lower first (`lax.top_k` keeps the lower index
first, candidates are concatenated in row order at every merge). A zero embedding has cosine 0.
A non-finite embedding is never ranked; the search then fails naming the first such row and its
shard (a corrupt pool), without a per-chunk host sync.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from medq_jax.engine.pool_store import PoolError, PoolStore

AXIS = "pool"
_TINY = 1e-30  # floor of a squared norm: a zero vector normalises to zero (cosine 0)


@dataclasses.dataclass(frozen=True)
class Hit:
  row: int  # global pool row
  id: str
  score: float  # cosine similarity
  shard: str


@dataclasses.dataclass(frozen=True)
class Retrieval:
  """Top-k per prototype: `scores`/`rows` [P, k] in descending score (rows -1 and scores -inf
  where the pool has fewer than k rows), and `hits[j]`, prototype j's rows above tau_sim."""

  scores: np.ndarray
  rows: np.ndarray
  hits: list[list[Hit]]
  tau_sim: float


def pool_mesh(devices: Iterable | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process), axis "pool"."""
  devices = np.asarray(list(jax.devices() if devices is None else devices))
  return Mesh(devices, (AXIS,))


def _normalise(x: jax.Array) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), _TINY))


@functools.lru_cache(maxsize=16)
def _chunk_step(mesh: Mesh, k: int, chunk_rows: int, dim: int, num_prototypes: int):
  """The jitted step: (best_scores [P,k], best_rows [P,k], first_bad, prototypes [P,D] unit,
  chunk [C,D] sharded by rows, offset, n_valid) -> (best_scores, best_rows, first_bad)."""
  devices = mesh.devices.size
  local_rows = chunk_rows // devices
  local_k = min(k, local_rows)
  no_bad = np.iinfo(np.int32).max

  def local_top_k(prototypes, chunk, offset, n_valid):
    first = offset + jax.lax.axis_index(AXIS).astype(jnp.int32) * local_rows
    rows = first + jnp.arange(local_rows, dtype=jnp.int32)
    in_pool = rows < offset + n_valid
    finite = jnp.isfinite(chunk).all(axis=-1)
    scores = jnp.dot(
      prototypes, _normalise(chunk).T, precision=jax.lax.Precision.HIGHEST
    )  # [P, local_rows]
    scores = jnp.where((in_pool & finite)[None, :], scores, -jnp.inf)
    top_scores, top_index = jax.lax.top_k(scores, local_k)
    bad = jnp.min(jnp.where(in_pool & ~finite, rows, no_bad))
    gathered_scores = jax.lax.all_gather(top_scores, AXIS, axis=1, tiled=True)
    gathered_rows = jax.lax.all_gather(rows[top_index], AXIS, axis=1, tiled=True)
    return gathered_scores, gathered_rows, jax.lax.pmin(bad, AXIS)

  sharded = jax.shard_map(
    local_top_k,
    mesh=mesh,
    in_specs=(P(), P(AXIS, None), P(), P()),
    out_specs=(P(), P(), P()),
    check_vma=False,
  )

  def step(best_scores, best_rows, first_bad, prototypes, chunk, offset, n_valid):
    scores, rows, bad = sharded(prototypes, chunk, offset, n_valid)
    merged_scores = jnp.concatenate([best_scores, scores], axis=1)
    merged_rows = jnp.concatenate([best_rows, rows], axis=1)
    best_scores, index = jax.lax.top_k(merged_scores, k)
    return best_scores, jnp.take_along_axis(merged_rows, index, 1), jnp.minimum(first_bad, bad)

  replicated = NamedSharding(mesh, P())
  return jax.jit(
    step,
    in_shardings=(replicated,) * 4 + (NamedSharding(mesh, P(AXIS, None)),) + (replicated,) * 2,
    out_shardings=(replicated,) * 3,
    donate_argnums=(0, 1),
  )


def _global_chunk(mesh: Mesh, rows: np.ndarray, chunk_rows: int) -> jax.Array:
  """This process's rows of one chunk -> the global [chunk_rows, D] array sharded by rows."""
  sharding = NamedSharding(mesh, P(AXIS, None))
  per_process = chunk_rows // jax.process_count()
  if rows.shape[0] < per_process:  # the pool's last chunk: zero rows, masked by n_valid
    rows = np.concatenate(
      [rows, np.zeros((per_process - rows.shape[0], rows.shape[1]), rows.dtype)]
    )
  if jax.process_count() == 1:
    return jax.device_put(rows, sharding)
  return jax.make_array_from_process_local_data(sharding, rows, (chunk_rows, rows.shape[1]))


def round_chunk_rows(chunk_rows: int, mesh: Mesh) -> int:
  """`chunk_rows` rounded up to a multiple of the mesh's device count."""
  devices = mesh.devices.size
  return max(devices, math.ceil(chunk_rows / devices) * devices)


def top_k_cosine(
  prototypes: np.ndarray,
  store: PoolStore,
  k: int,
  chunk_rows: int = 65536,
  mesh: Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """(scores [P, k], rows [P, k]): the k pool rows of highest cosine with each prototype,
  descending, ties by lower row; k is capped at the pool's size. Streams `store` in chunks."""
  prototypes = _check_prototypes(prototypes, store)
  if len(store) == 0:
    raise PoolError(f"{store.pool_dir}: the pool is empty (embed images into it first)")
  if k < 1:
    raise ValueError(f"k: expected >= 1, got {k}")
  mesh = mesh or pool_mesh()
  chunk_rows = round_chunk_rows(min(chunk_rows, len(store)), mesh)
  k = min(k, len(store))
  step = _chunk_step(mesh, k, chunk_rows, store.dim, prototypes.shape[0])
  replicated = NamedSharding(mesh, P())
  units = jax.device_put(np.asarray(_normalise(jnp.asarray(prototypes))), replicated)
  best_scores = jax.device_put(np.full((prototypes.shape[0], k), -np.inf, np.float32), replicated)
  best_rows = jax.device_put(np.full((prototypes.shape[0], k), -1, np.int32), replicated)
  first_bad = jax.device_put(np.int32(np.iinfo(np.int32).max), replicated)
  per_process = chunk_rows // jax.process_count()
  for offset in range(0, len(store), chunk_rows):
    n_valid = min(chunk_rows, len(store) - offset)
    mine = offset + jax.process_index() * per_process
    rows = store.read_rows(min(mine, len(store)), min(mine + per_process, len(store)))
    chunk = _global_chunk(mesh, rows, chunk_rows)
    best_scores, best_rows, first_bad = step(
      best_scores, best_rows, first_bad, units, chunk, np.int32(offset), np.int32(n_valid)
    )
  # Replicated results: read this process's copy (np.asarray needs every device addressable).
  best_scores, best_rows = (np.asarray(x.addressable_data(0)) for x in (best_scores, best_rows))
  first_bad = int(first_bad.addressable_data(0))
  if first_bad != np.iinfo(np.int32).max:
    item_id, _, shard = store.row_info(first_bad)
    raise PoolError(
      f"{shard}.npy: embedding of {item_id!r} (pool row {first_bad}) is not finite (a corrupt "
      "shard: re-embed it)"
    )
  return best_scores, best_rows


def _check_prototypes(prototypes, store: PoolStore) -> np.ndarray:
  prototypes = np.asarray(prototypes, np.float32)
  if prototypes.ndim != 2 or prototypes.shape[0] < 1:
    raise ValueError(f"prototypes: expected [P >= 1, D], got shape {list(prototypes.shape)}")
  if store.dim is not None and prototypes.shape[1] != store.dim:
    raise PoolError(
      f"{store.pool_dir}: pool embeddings have dimension {store.dim} ({store.encoder}), "
      f"prototypes have {prototypes.shape[1]} (embed both with the same encoder)"
    )
  if not np.isfinite(prototypes).all() or not (np.abs(prototypes).sum(axis=1) > 0).all():
    raise ValueError("prototypes: every prototype must be finite and non-zero")
  return prototypes


def retrieve(
  prototypes: np.ndarray,
  store: PoolStore,
  k: int,
  tau_sim: float,
  chunk_rows: int = 65536,
  mesh: Mesh | None = None,
) -> Retrieval:
  """Eq. 2 with a top-k cap: for each prototype, its top-k pool rows with cosine > tau_sim."""
  if not -1.0 <= tau_sim <= 1.0:
    raise ValueError(f"tau_sim: expected a cosine in [-1, 1], got {tau_sim}")
  scores, rows = top_k_cosine(prototypes, store, k, chunk_rows, mesh)
  hits = []
  for row_scores, row_rows in zip(scores, rows):
    keep = (row_rows >= 0) & (row_scores > tau_sim)
    hits.append(
      [
        Hit(row=int(row), id=item_id, score=float(score), shard=shard)
        for row, score in zip(row_rows[keep], row_scores[keep])
        for item_id, _, shard in [store.row_info(int(row))]
      ]
    )
  return Retrieval(scores, rows, hits, float(tau_sim))
