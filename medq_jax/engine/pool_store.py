"""The image pool's embeddings on disk: sharded float32 `.npy` files read as memory maps, each
with a JSONL index of ids and provenance, appendable and resumable.

  pool_dir/
    shard-p000-00000.npy     float32 [count, dim] (NumPy format, opened with mmap_mode="r")
    shard-p000-00000.jsonl   line 1: {"format", "dim", "count", "encoder", "crc32"};
                             then one {"id", "provenance"} line per row, in row order

A shard is visible only once its index exists: both files are written under temporary names,
fsynced and renamed (`data_pipeline.atomic_files`), the `.npy` first and the `.jsonl` last (the
commit), so a killed writer leaves at most an orphan `.npy` or temporary file, which readers
ignore and the next writer removes. Shard names carry the JAX process index (`p000`), so several hosts append to one pool
without colliding. Opening checks every shard against its index (dtype, shape, file size, row
count, one dimension and one encoder across the pool, unique ids) and fails with one `PoolError`
naming the shard; `verify()` also recomputes each shard's CRC32 (a flipped bit).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import zlib
from collections.abc import Sequence

import numpy as np

from data_pipeline import atomic_files

FORMAT = 1
_SHARD = re.compile(r"^shard-p(\d{3})-(\d{5})\.jsonl$")
_CRC_ROWS = 1 << 16  # rows per CRC32 read: bounded memory on shards of any size


class PoolError(ValueError):
  """A pool that cannot be read or appended to; the message names the shard and the problem."""


@dataclasses.dataclass(frozen=True)
class Shard:
  """One committed shard: its files, its rows' ids and provenance, and its memory-mapped data."""

  name: str  # "shard-p000-00000"
  npy_path: str
  index_path: str
  dim: int
  encoder: str
  crc32: int
  ids: tuple[str, ...]
  provenance: tuple[dict, ...]

  @property
  def count(self) -> int:
    return len(self.ids)

  def data(self) -> np.ndarray:
    """float32 [count, dim], memory-mapped read-only (nothing is read until sliced)."""
    return np.load(self.npy_path, mmap_mode="r")


def _crc32(array: np.ndarray) -> int:
  crc = 0
  for start in range(0, array.shape[0], _CRC_ROWS):
    crc = zlib.crc32(np.ascontiguousarray(array[start : start + _CRC_ROWS]).tobytes(), crc)
  return crc


def _read_index(index_path: str) -> tuple[dict, list[dict]]:
  where = os.path.basename(index_path)
  try:
    with open(index_path, encoding="utf-8") as handle:
      lines = [json.loads(line) for line in handle if line.strip()]
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
    raise PoolError(f"{where}: unreadable index ({error})") from None
  if not lines or not isinstance(lines[0], dict) or lines[0].get("format") != FORMAT:
    raise PoolError(f"{where}: first line is not a format-{FORMAT} shard header")
  header, rows = lines[0], lines[1:]
  for key in ("dim", "count", "encoder", "crc32"):
    if key not in header:
      raise PoolError(f"{where}: header has no {key!r}")
  if len(rows) != header["count"]:
    raise PoolError(f"{where}: header says {header['count']} rows, index lists {len(rows)}")
  for number, row in enumerate(rows, start=2):
    if not isinstance(row, dict) or not isinstance(row.get("id"), str):
      raise PoolError(f"{where}: line {number} has no string 'id'")
  return header, rows


def _open_shard(index_path: str) -> Shard:
  header, rows = _read_index(index_path)
  name = os.path.basename(index_path)[: -len(".jsonl")]
  npy_path = index_path[: -len(".jsonl")] + ".npy"
  count, dim = int(header["count"]), int(header["dim"])
  try:
    data = np.load(npy_path, mmap_mode="r")
  except (OSError, ValueError, EOFError) as error:
    raise PoolError(f"{name}.npy: unreadable embeddings ({error})") from None
  if data.dtype != np.float32 or data.shape != (count, dim):
    raise PoolError(
      f"{name}.npy: expected float32 [{count}, {dim}] (from its index), "
      f"got {data.dtype} {list(data.shape)}"
    )
  expected_size = data.offset + count * dim * 4
  if os.path.getsize(npy_path) != expected_size:
    raise PoolError(
      f"{name}.npy: {os.path.getsize(npy_path)} bytes, expected {expected_size} (truncated or "
      "padded)"
    )
  return Shard(
    name=name,
    npy_path=npy_path,
    index_path=index_path,
    dim=dim,
    encoder=str(header["encoder"]),
    crc32=int(header["crc32"]),
    ids=tuple(row["id"] for row in rows),
    provenance=tuple(row.get("provenance", {}) for row in rows),
  )


class PoolStore:
  """A read view of the committed shards of `pool_dir`, in name order (process, then number).

  Rows are numbered globally in that order: row r of the pool is `ids[r]`. Raises `PoolError`
  (naming the shard) on a shard that does not match its index, on mixed embedding dimensions or
  encoders, and on an id that appears twice."""

  def __init__(self, pool_dir: str):
    if not os.path.isdir(pool_dir):
      raise PoolError(f"{pool_dir}: no such pool directory")
    self.pool_dir = pool_dir
    paths = sorted(p for p in glob.glob(os.path.join(pool_dir, "*.jsonl")) if _is_shard(p))
    self.shards = [_open_shard(path) for path in paths]
    self.dim = self.shards[0].dim if self.shards else None
    self.encoder = self.shards[0].encoder if self.shards else None
    owner: dict[str, str] = {}
    for shard in self.shards:
      if shard.dim != self.dim:
        raise PoolError(
          f"{shard.name}: embedding dimension {shard.dim}, but {self.shards[0].name} has "
          f"{self.dim} (one pool holds one embedding space)"
        )
      if shard.encoder != self.encoder:
        raise PoolError(
          f"{shard.name}: encoder {shard.encoder!r}, but {self.shards[0].name} has "
          f"{self.encoder!r} (one pool holds one embedding space)"
        )
      for item_id in shard.ids:
        if item_id in owner:
          raise PoolError(f"{shard.name}: id {item_id!r} is already in {owner[item_id]}")
        owner[item_id] = shard.name
    self._offsets = np.cumsum([0] + [shard.count for shard in self.shards])

  def __len__(self) -> int:
    return int(self._offsets[-1])

  @property
  def ids(self) -> list[str]:
    """Every row's id, in global row order."""
    return [item_id for shard in self.shards for item_id in shard.ids]

  def id_set(self) -> set[str]:
    return {item_id for shard in self.shards for item_id in shard.ids}

  def locate(self, row: int) -> tuple[Shard, int]:
    """(shard, row within the shard) of global row `row`."""
    if not 0 <= row < len(self):
      raise IndexError(f"row {row} outside the pool's {len(self)} rows")
    index = int(np.searchsorted(self._offsets, row, side="right")) - 1
    return self.shards[index], row - int(self._offsets[index])

  def row_info(self, row: int) -> tuple[str, dict, str]:
    """(id, provenance, shard name) of global row `row`."""
    shard, local = self.locate(row)
    return shard.ids[local], shard.provenance[local], shard.name

  def shard_of(self, row: int) -> str:
    return self.locate(row)[0].name

  def iter_chunks(self, chunk_rows: int, start: int = 0, stop: int | None = None):
    """Yields (global offset, float32 [n <= chunk_rows, dim]) covering rows [start, stop) in
    order; a chunk spans shard boundaries (copied into one array) so every chunk but the last is
    full. Within one shard a chunk is a slice of the memory map, read when used."""
    if chunk_rows < 1:
      raise ValueError(f"chunk_rows: expected >= 1, got {chunk_rows}")
    stop = len(self) if stop is None else min(stop, len(self))
    offset = start
    while offset < stop:
      end = min(offset + chunk_rows, stop)
      yield offset, self.read_rows(offset, end)
      offset = end

  def read_rows(self, start: int, stop: int) -> np.ndarray:
    """float32 [stop - start, dim] of global rows [start, stop)."""
    parts = []
    row = start
    while row < stop:
      shard, local = self.locate(row)
      take = min(shard.count - local, stop - row)
      parts.append(shard.data()[local : local + take])
      row += take
    if not parts:
      return np.zeros((0, self.dim or 0), np.float32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

  def verify(self) -> None:
    """Recomputes every shard's CRC32 (reads the whole pool once); PoolError naming the first
    shard whose data changed after it was written (a flipped bit, a partial overwrite)."""
    for shard in self.shards:
      if _crc32(shard.data()) != shard.crc32:
        raise PoolError(f"{shard.name}.npy: CRC32 mismatch (the data changed after it was written)")


def _is_shard(path: str) -> bool:
  return bool(_SHARD.match(os.path.basename(path)))


class PoolWriter:
  """Appends embeddings to `pool_dir` in shards of `shard_rows` rows for process `process_index`.

  `add()` buffers rows and commits a shard each time `shard_rows` are buffered; `close()` commits
  the rest. Rows buffered when the process dies are lost (and recomputed by a resumed job); a
  committed shard is never rewritten. Refuses ids already in the pool (`done_ids()` tells a
  resumed job what to skip), a dimension or encoder other than the pool's, and non-finite rows.
  """

  def __init__(
    self, pool_dir: str, dim: int, encoder: str, shard_rows: int = 65536, process_index: int = 0
  ):
    if dim < 1 or shard_rows < 1:
      raise ValueError(f"dim and shard_rows: expected >= 1, got {dim} and {shard_rows}")
    os.makedirs(pool_dir, exist_ok=True)
    self.pool_dir, self.dim, self.encoder = pool_dir, int(dim), str(encoder)
    self.shard_rows, self.process_index = int(shard_rows), int(process_index)
    self._remove_orphans()
    store = PoolStore(pool_dir)
    if store.dim is not None and (store.dim, store.encoder) != (self.dim, self.encoder):
      raise PoolError(
        f"{pool_dir}: holds {store.encoder!r} embeddings of dimension {store.dim}; cannot append "
        f"{self.encoder!r} embeddings of dimension {self.dim} (one pool holds one embedding space)"
      )
    self._done = store.id_set()
    mine = [s.name for s in store.shards if s.name.startswith(f"shard-p{self.process_index:03d}-")]
    self._next = 1 + max((int(name[-5:]) for name in mine), default=-1)
    self._rows: list[np.ndarray] = []
    self._ids: list[str] = []
    self._provenance: list[dict] = []
    self.committed: list[str] = []

  def _remove_orphans(self) -> None:
    """Deletes what a killed writer of this process left: temporaries and `.npy` without index."""
    name = f"shard-p{self.process_index:03d}-"
    temporaries = os.path.join(self.pool_dir, f".tmp_*{name}*")  # atomic_files' temporary names
    for path in glob.glob(os.path.join(self.pool_dir, name + "*")) + glob.glob(temporaries):
      if (
        ".tmp" in os.path.basename(path)
        or path.endswith(".npy")
        and not os.path.exists(path[: -len(".npy")] + ".jsonl")
      ):
        os.remove(path)

  def done_ids(self) -> set[str]:
    """Ids already committed to the pool (by any process) or buffered here."""
    return self._done | set(self._ids)

  def add(
    self, embeddings: np.ndarray, ids: Sequence[str], provenance: Sequence[dict] | None = None
  ) -> None:
    """Buffers rows embeddings [n, dim] with their ids (and provenance dicts)."""
    embeddings = np.asarray(embeddings)
    provenance = list(provenance) if provenance is not None else [{} for _ in ids]
    if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
      raise PoolError(
        f"{self.pool_dir}: expected embeddings [n, {self.dim}], got {list(embeddings.shape)}"
      )
    if not len(ids) == len(provenance) == embeddings.shape[0]:
      raise PoolError(
        f"{self.pool_dir}: {embeddings.shape[0]} embeddings, {len(ids)} ids, "
        f"{len(provenance)} provenance entries"
      )
    if not np.isfinite(embeddings).all():
      bad = int(np.argwhere(~np.isfinite(embeddings).all(axis=1))[0, 0])
      raise PoolError(f"{self.pool_dir}: embedding of {ids[bad]!r} is not finite")
    seen = self.done_ids()
    for item_id in ids:
      if item_id in seen:
        raise PoolError(f"{self.pool_dir}: id {item_id!r} is already in the pool")
      seen.add(item_id)
    self._rows.append(embeddings.astype(np.float32))
    self._ids.extend(str(item_id) for item_id in ids)
    self._provenance.extend(provenance)
    while len(self._ids) >= self.shard_rows:
      self._commit(self.shard_rows)

  def close(self) -> list[str]:
    """Commits the buffered rows; returns the names of every shard this writer committed."""
    if self._ids:
      self._commit(len(self._ids))
    return self.committed

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    if exc_info[0] is None:
      self.close()

  def _commit(self, count: int) -> None:
    rows = np.concatenate(self._rows, axis=0)
    data, rest = rows[:count], rows[count:]
    ids, provenance = self._ids[:count], self._provenance[:count]
    name = f"shard-p{self.process_index:03d}-{self._next:05d}"
    base = os.path.join(self.pool_dir, name)
    header = dict(
      format=FORMAT, dim=self.dim, count=count, encoder=self.encoder, crc32=_crc32(data)
    )
    atomic_files.atomic_write(
      base + ".npy", lambda h: np.save(h, np.ascontiguousarray(data)), binary=True
    )
    lines = [json.dumps(header)] + [
      json.dumps({"id": item_id, "provenance": prov}) for item_id, prov in zip(ids, provenance)
    ]
    # the index last: its rename is the commit that makes the shard visible
    atomic_files.atomic_write_text(base + ".jsonl", "\n".join(lines) + "\n")
    self._done.update(ids)
    self._rows = [rest] if len(rest) else []
    self._ids, self._provenance = self._ids[count:], self._provenance[count:]
    self._next += 1
    self.committed.append(name)
