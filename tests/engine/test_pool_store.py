"""The pool store: round trip, shards across boundaries, resume after a kill, and every way a pool
on disk can be wrong failing with one PoolError that names the shard."""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest

from medq_jax.engine.pool_store import PoolError, PoolStore, PoolWriter


def _rows(count, dim=8, seed=0):
  return np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)


def _ids(start, stop):
  return [f"img{i:04d}" for i in range(start, stop)]


def _write(pool_dir, data, ids, shard_rows=4, **kwargs):
  with PoolWriter(pool_dir, data.shape[1], "test-encoder", shard_rows=shard_rows, **kwargs) as w:
    w.add(data, ids, [{"path": f"/x/{item}.png"} for item in ids])
  return w.committed


def test_round_trip_ids_provenance_and_chunks_across_shards(tmp_path):
  data = _rows(10)
  names = _write(tmp_path, data, _ids(0, 10), shard_rows=4)
  assert names == ["shard-p000-00000", "shard-p000-00001", "shard-p000-00002"]
  store = PoolStore(str(tmp_path))
  assert len(store) == 10 and store.dim == 8 and store.encoder == "test-encoder"
  assert store.ids == _ids(0, 10)
  np.testing.assert_array_equal(store.read_rows(0, 10), data)
  assert store.row_info(5) == ("img0005", {"path": "/x/img0005.png"}, "shard-p000-00001")
  chunks = list(store.iter_chunks(3))
  assert [offset for offset, _ in chunks] == [0, 3, 6, 9]
  np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), data)
  assert isinstance(store.shards[0].data(), np.memmap)
  store.verify()


def test_append_and_processes_share_a_pool(tmp_path):
  data = _rows(9)
  _write(tmp_path, data[:5], _ids(0, 5), shard_rows=4)
  _write(tmp_path, data[5:], _ids(5, 9), shard_rows=4, process_index=1)
  store = PoolStore(str(tmp_path))
  assert [s.name for s in store.shards] == [
    "shard-p000-00000",
    "shard-p000-00001",
    "shard-p001-00000",
  ]
  np.testing.assert_array_equal(store.read_rows(0, 9), data)
  with pytest.raises(PoolError, match=r"id 'img0003' is already in the pool"):
    _write(tmp_path, data[:1], ["img0003"])


def test_killed_writer_leaves_no_visible_half_shard_and_resume_skips_done_ids(tmp_path):
  data = _rows(10)
  writer = PoolWriter(str(tmp_path), 8, "test-encoder", shard_rows=4)
  writer.add(data[:6], _ids(0, 6))  # one shard committed, two rows buffered, then a "kill":
  base = os.path.join(tmp_path, "shard-p000-00001")
  np.save(base + ".npy", data[4:8])  # renamed data whose index never got written
  # the index's temporary file as data_pipeline.atomic_files names it (mkstemp in the pool)
  temporary = os.path.join(tmp_path, ".tmp_k3x9qshard-p000-00001.jsonl")
  with open(temporary, "w") as handle:
    handle.write('{"format": 1')
  store = PoolStore(str(tmp_path))
  assert store.ids == _ids(0, 4)  # the orphans are invisible
  resumed = PoolWriter(str(tmp_path), 8, "test-encoder", shard_rows=4)
  assert not os.path.exists(base + ".npy") and not os.path.exists(temporary)
  todo = [i for i, item in enumerate(_ids(0, 10)) if item not in resumed.done_ids()]
  assert todo == list(range(4, 10))
  resumed.add(data[todo], [_ids(0, 10)[i] for i in todo])
  resumed.close()
  store = PoolStore(str(tmp_path))
  assert store.ids == _ids(0, 10)
  np.testing.assert_array_equal(store.read_rows(0, 10), data)


def test_mixed_dimensions_are_one_error_naming_the_shard(tmp_path):
  _write(tmp_path, _rows(4, dim=8), _ids(0, 4))
  with pytest.raises(PoolError, match="cannot append 'test-encoder' embeddings of dimension 16"):
    _write(tmp_path, _rows(4, dim=16), _ids(4, 8))
  other = tmp_path / "other"  # a shard another job wrote with another encoder, copied in:
  _write(other, _rows(4, dim=16), _ids(4, 8), process_index=1)
  for suffix in (".npy", ".jsonl"):
    shutil.copy(other / f"shard-p001-00000{suffix}", tmp_path)
  with pytest.raises(PoolError, match=r"^shard-p001-00000: embedding dimension 16, but "):
    PoolStore(str(tmp_path))


def test_other_encoder_refused(tmp_path):
  _write(tmp_path, _rows(4), _ids(0, 4))
  with pytest.raises(PoolError, match="holds 'test-encoder' embeddings"):
    PoolWriter(str(tmp_path), 8, "another-encoder")


@pytest.mark.parametrize(
  "damage, message",
  [
    ("truncate", r"shard-p000-00001\.npy: unreadable embeddings|shard-p000-00001\.npy: \d+ bytes"),
    ("append", r"shard-p000-00001\.npy: \d+ bytes, expected \d+"),
    ("index_count", r"shard-p000-00001\.jsonl: header says 4 rows, index lists 3"),
    ("index_garbage", r"shard-p000-00001\.jsonl: unreadable index"),
    ("index_header", r"shard-p000-00001\.jsonl: first line is not a format-1 shard header"),
    ("dtype", r"shard-p000-00001\.npy: expected float32 \[4, 8\] \(from its index\), got float64"),
  ],
)
def test_corrupt_shard_is_one_error_naming_it(tmp_path, damage, message):
  _write(tmp_path, _rows(12), _ids(0, 12))
  npy = os.path.join(tmp_path, "shard-p000-00001.npy")
  index = npy[: -len(".npy")] + ".jsonl"
  if damage == "truncate":
    with open(npy, "r+b") as handle:
      handle.truncate(os.path.getsize(npy) - 5)
  elif damage == "append":
    with open(npy, "ab") as handle:
      handle.write(b"\0" * 4)
  elif damage == "index_count":
    lines = pathlib.Path(index).read_text().splitlines()
    pathlib.Path(index).write_text("\n".join(lines[:-1]) + "\n")
  elif damage == "index_garbage":
    with open(index, "ab") as handle:
      handle.write(b"\xff{not json\n")
  elif damage == "index_header":
    lines = pathlib.Path(index).read_text().splitlines()
    pathlib.Path(index).write_text("\n".join([json.dumps({"format": 99})] + lines[1:]) + "\n")
  elif damage == "dtype":
    np.save(npy, _rows(4).astype(np.float64))
  with pytest.raises(PoolError, match=message):
    PoolStore(str(tmp_path))


def test_flipped_bit_found_by_verify(tmp_path):
  _write(tmp_path, _rows(8), _ids(0, 8))
  npy = os.path.join(tmp_path, "shard-p000-00001.npy")
  store = PoolStore(str(tmp_path))
  offset = store.shards[1].data().offset
  with open(npy, "r+b") as handle:
    handle.seek(offset + 13)
    byte = handle.read(1)
    handle.seek(offset + 13)
    handle.write(bytes([byte[0] ^ 0x10]))
  with pytest.raises(PoolError, match=r"shard-p000-00001\.npy: CRC32 mismatch"):
    PoolStore(str(tmp_path)).verify()


def test_bad_rows_refused_at_write(tmp_path):
  writer = PoolWriter(str(tmp_path), 8, "test-encoder")
  bad = _rows(3)
  bad[1, 2] = np.nan
  with pytest.raises(PoolError, match=r"embedding of 'img0001' is not finite"):
    writer.add(bad, _ids(0, 3))
  with pytest.raises(PoolError, match=r"expected embeddings \[n, 8\], got \[3, 4\]"):
    writer.add(_rows(3, dim=4), _ids(0, 3))
  with pytest.raises(PoolError, match="3 embeddings, 2 ids"):
    writer.add(_rows(3), _ids(0, 2))
  with pytest.raises(PoolError, match="id 'a' is already in the pool"):
    writer.add(_rows(2), ["a", "a"])
  assert writer.close() == [] and PoolStore(str(tmp_path)).ids == []


def test_missing_and_empty_pool(tmp_path):
  with pytest.raises(PoolError, match="no such pool directory"):
    PoolStore(str(tmp_path / "absent"))
  store = PoolStore(str(tmp_path))
  assert len(store) == 0 and store.dim is None and list(store.iter_chunks(4)) == []
