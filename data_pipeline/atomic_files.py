"""One way to write a file that a kill cannot leave half-written: a temporary file in the same
directory, flushed and fsynced, renamed over the target, then the directory fsynced. A reader
sees the old file or the new one, never a mix; a failed write removes its temporary file.

And one way to read back the JSON records written so (`read_json`): absent is None, anything
unreadable (a flipped bit, a truncation, a directory in its place) an error naming the file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import IO


def fsync_dir(directory: str) -> None:
  """Makes a rename in `directory` durable."""
  fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def atomic_write(
  path: str, write: Callable[[IO], None], *, binary: bool = False, newline: str | None = None
) -> None:
  """Calls write(handle) on a temporary file next to `path`, then renames it over `path`."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=os.path.basename(path))
  try:
    if binary:
      handle = os.fdopen(fd, "wb")
    else:
      handle = os.fdopen(fd, "w", encoding="utf-8", newline=newline)
    with handle:
      write(handle)
      handle.flush()
      os.fsync(handle.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  fsync_dir(directory)


def atomic_write_text(path: str, text: str) -> None:
  atomic_write(path, lambda handle: handle.write(text))


def atomic_write_bytes(path: str, data: bytes) -> None:
  atomic_write(path, lambda handle: handle.write(data), binary=True)


def read_json(
  path: str,
  describe: str = "unreadable JSON",
  error: Callable[[str], Exception] = ValueError,
  hint: str = "",
):
  """The JSON value in `path`, or None when there is no such file. A file that cannot be read or
  parsed raises `error("<path>: <describe> (<reason>)[; <hint>]")`: `hint` says what to do."""
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as handle:
      return json.load(handle)
  except (OSError, ValueError) as reason:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
    raise error(f"{path}: {describe} ({reason})" + (f"; {hint}" if hint else "")) from None
