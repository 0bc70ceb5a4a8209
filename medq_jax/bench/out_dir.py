"""One run per output directory: what an earlier run wrote is removed first, this run's files are
listed in ``manifest.json``, and a directory holding anything else is refused.

`prepare(out_dir, mode, inputs, overwrite)` runs before a job writes anything:

* ``generate`` refuses a non-empty directory unless ``overwrite``;
* every mode refuses a directory holding files that no earlier run of ours wrote (not in its
  ``manifest.json`` and not named like our outputs) unless ``overwrite``;
* then the earlier run's files (its manifest, or our output names when a run was killed before
  writing one) are deleted, except this run's inputs and the judge's reply cache (kept so a
  killed run resumes without asking again). Unknown files are never deleted.

`finish(out_dir, mode, run)` lists every file created or changed since `prepare` (size and
SHA-256) in ``manifest.json``.
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import hashlib
import json
import os
import sys
from collections.abc import Iterable

from medq_jax.bench.schema import BenchInputError

MANIFEST = "manifest.json"
# What our modes write (relative paths; directories end in "/").
OUTPUT_PATTERNS = (
  "report.md",
  "report.json",
  "exclusions.csv",
  "tables/*",
  "items/*",
  "plots/*",
  "predictions_*.jsonl",
  "alignment.md",
  "alignment.csv",
  "alignment.json",
  "confusion_*.png",
  "restoration.csv",
  "medqbench_*.tsv",
  "medqbench_*.jsonl",
  MANIFEST,
)
CACHE_PATTERNS = ("judge_cache.sqlite", "judge_cache.sqlite-*")


def _files(out_dir: str) -> list[str]:
  found = []
  for root, _, names in os.walk(out_dir):
    for name in names:
      found.append(os.path.relpath(os.path.join(root, name), out_dir).replace(os.sep, "/"))
  return sorted(found)


def _matches(path: str, patterns: Iterable[str]) -> bool:
  return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)


def _previous(out_dir: str) -> set[str]:
  path = os.path.join(out_dir, MANIFEST)
  if not os.path.exists(path):
    return set()
  try:
    with open(path, encoding="utf-8") as handle:
      return {entry["path"] for entry in json.load(handle)["files"]} | {MANIFEST}
  except (OSError, ValueError, KeyError, TypeError):
    return {MANIFEST}  # a damaged manifest: our output names still identify the earlier run


@dataclasses.dataclass(frozen=True)
class Run:
  """When a run started and the files it found (path -> (mtime_ns, size)) after clearing."""

  started: str
  before: dict


def _stat(out_dir: str) -> dict:
  stats = {}
  for path in _files(out_dir):
    info = os.stat(os.path.join(out_dir, path))
    stats[path] = (info.st_mtime_ns, info.st_size)
  return stats


def prepare(out_dir: str, mode: str, inputs: Iterable[str] = (), overwrite: bool = False) -> Run:
  """Checks and clears ``out_dir`` for a run of ``mode``; returns what `finish` needs."""
  started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
  if not os.path.isdir(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    return Run(started, {})
  present = _files(out_dir)
  keep = {
    os.path.relpath(os.path.abspath(p), os.path.abspath(out_dir)).replace(os.sep, "/")
    for p in inputs
    if p
  }
  keep |= {p for p in present if _matches(p, CACHE_PATTERNS)}
  earlier = _previous(out_dir)
  ours = {p for p in present if p in earlier or _matches(p, OUTPUT_PATTERNS)} - keep
  unknown = [p for p in present if p not in ours and p not in keep]
  if present and mode == "generate" and not overwrite:
    raise BenchInputError(
      f"{out_dir}: not empty ({len(present)} file(s), e.g. {present[0]!r}); generate writes "
      "items into an empty directory: pass --overwrite to replace an earlier run's files"
    )
  if unknown and not overwrite:
    raise BenchInputError(
      f"{out_dir}: holds {len(unknown)} file(s) that no earlier medq-bench run listed, e.g. "
      f"{unknown[0]!r}; use an empty --out_dir, or pass --overwrite (earlier outputs are "
      "replaced, other files are left in place and listed in manifest.json)"
    )
  for path in sorted(ours):
    os.remove(os.path.join(out_dir, path))
  for root, dirs, _ in os.walk(out_dir, topdown=False):  # directories emptied above
    for name in dirs:
      full = os.path.join(root, name)
      if not os.listdir(full):
        os.rmdir(full)
  return Run(started, _stat(out_dir))


def finish(out_dir: str, mode: str, run: Run) -> str:
  """Writes ``manifest.json``: every file this run created or changed."""
  files, other = [], []
  for path, stat in _stat(out_dir).items():
    if path == MANIFEST:
      continue
    full = os.path.join(out_dir, path)
    if run.before.get(path) == stat:
      other.append(path)
      continue
    digest = hashlib.sha256()
    with open(full, "rb") as handle:
      for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    files.append({"path": path, "bytes": os.path.getsize(full), "sha256": digest.hexdigest()})
  payload = {
    "mode": mode,
    "started": run.started,
    "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "command": sys.argv,
    "files": files,
    "not_written_by_this_run": other,
  }
  path = os.path.join(out_dir, MANIFEST)
  with open(path, "w", encoding="utf-8") as handle:
    json.dump(payload, handle, indent=2)
  return path
