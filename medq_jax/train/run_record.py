"""What a run fixes when it starts and keeps across resumes: `<workdir>/run.json`.

schedule_steps   the cosine schedule's horizon. Raising `train.steps` on resume trains longer
                 on the tail of the original schedule; `train.restretch_schedule=True` is the
                 explicit option that stretches the cosine to the new `train.steps` instead.
loader_workers   Grain's worker count: the iterator state in a checkpoint holds one position
                 per worker, so a resume with another count is refused naming the value to use.
"""

from __future__ import annotations

import json
import logging
import os

import jax

from data_pipeline import atomic_files

RUN_FILE = "run.json"


class RunRecordError(ValueError):
  """A resume that contradicts what the run fixed when it started; says what to do."""


def _read(path: str) -> dict:
  record = atomic_files.read_json(
    path, "unreadable run record", RunRecordError, "delete it to reset"
  )
  return {} if record is None else record


def settle(config, workdir: str, resuming: bool):
  """Returns a copy of `config` whose `train.schedule_steps` is the run's horizon, after
  checking a resume's loader workers; writes `<workdir>/run.json` (process 0)."""
  path = os.path.join(workdir, RUN_FILE)
  record = _read(path) if resuming else {}
  out = config.copy_and_resolve_references()
  workers = int(config.data.get("loader_workers", 0))
  saved_workers = record.get("loader_workers")
  if saved_workers is not None and int(saved_workers) != workers:
    raise RunRecordError(
      f"{workdir}: the checkpoints hold the data iterator of {saved_workers} Grain worker(s); "
      f"resume with --config.data.loader_workers={saved_workers} (got {workers}), or start a "
      "new workdir"
    )
  wanted = int(config.train.get("schedule_steps", 0) or config.train.steps)
  horizon = int(record.get("schedule_steps", wanted))
  if horizon != wanted:
    if config.train.get("restretch_schedule", False):
      logging.warning("schedule horizon %d -> %d (train.restretch_schedule)", horizon, wanted)
      horizon = wanted
    else:
      logging.warning(
        "keeping the run's schedule horizon of %d steps (train.steps=%d now; pass "
        "--config.train.restretch_schedule=True to stretch the cosine to it)",
        horizon,
        config.train.steps,
      )
  with out.unlocked():
    out.train.schedule_steps = horizon
  if jax.process_index() == 0:
    atomic_files.atomic_write_text(
      path, json.dumps({"schedule_steps": horizon, "loader_workers": workers})
    )
  return out
