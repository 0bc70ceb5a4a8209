"""data_pipeline.atomic_files: a failed write leaves the old file and no temporary behind."""

import os
import pathlib

import pytest

from data_pipeline import atomic_files


def test_write_replace_and_failure_keeps_the_old_file(tmp_path):
  path = str(tmp_path / "sub" / "state.json")
  atomic_files.atomic_write_text(path, "one")
  atomic_files.atomic_write_bytes(path, b"two")
  assert pathlib.Path(path).read_bytes() == b"two"

  def half_then_fail(handle):
    handle.write("partial")
    raise RuntimeError("killed mid-write")

  with pytest.raises(RuntimeError, match="killed mid-write"):
    atomic_files.atomic_write(path, half_then_fail)
  assert pathlib.Path(path).read_bytes() == b"two"
  assert os.listdir(os.path.dirname(path)) == ["state.json"]


def test_newline_is_kept_for_csv(tmp_path):
  path = str(tmp_path / "q.csv")
  atomic_files.atomic_write(path, lambda h: h.write("a,b\r\n"), newline="")
  assert pathlib.Path(path).read_bytes() == b"a,b\r\n"
