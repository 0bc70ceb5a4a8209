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


class _RecordError(ValueError):
  pass


@pytest.mark.parametrize(
  "damage, reason",
  [
    (lambda p: p.write_text('{"a": 1, "b"'), "Expecting"),  # truncated by a kill
    (lambda p: p.write_bytes(b'{"a": \xff}'), "codec can't decode"),  # a flipped bit
    (lambda p: p.write_text(""), "Expecting value"),  # empty
    (lambda p: p.mkdir(), "Is a directory"),  # a directory in its place
  ],
)
def test_read_json_names_the_file_and_why(tmp_path, damage, reason):
  path = tmp_path / "record.json"
  assert atomic_files.read_json(str(path)) is None  # absent: None, not an error
  atomic_files.atomic_write_text(str(path), '{"a": [1, 2]}')
  assert atomic_files.read_json(str(path)) == {"a": [1, 2]}
  path.unlink()
  damage(path)
  with pytest.raises(_RecordError) as caught:
    atomic_files.read_json(str(path), "unreadable record", _RecordError, "delete it")
  message = str(caught.value)
  assert message.startswith(f"{path}: unreadable record (") and message.endswith("; delete it")
  assert reason in message


def test_a_damaged_staging_index_is_named(tmp_path):
  from data_pipeline import staging

  assert staging.read_staging_index(str(tmp_path)) is None
  (tmp_path / staging.INDEX_FILE).write_text('{"slices": [')
  with pytest.raises(ValueError, match=rf"{staging.INDEX_FILE}: unreadable staging index .*delete"):
    staging.read_staging_index(str(tmp_path))
