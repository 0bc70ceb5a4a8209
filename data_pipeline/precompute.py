"""The precompute: a Grain pipeline from raw slices to ArrayRecord shards, resumable, with manifest.

Stage 1 (main process): sources -> raw slices in staging/ (skipped inputs recorded).
Stage 2 (Grain): MapDataset over the work items of unfinished shards -> ExampleMaker in worker
processes (degradation, description, TFDS serialisation) -> ArrayRecord shard files. A shard is
written to a temporary file and renamed, then a `.done.json` sidecar is written; a rerun skips
shards with a sidecar, so a killed precompute continues without redoing finished shards.
Finally TFDS metadata and manifest.json (counts per split, task, severity, modality; skipped
inputs with reasons) are written.
"""

import collections
import glob
import hashlib
import json
import logging
import os

import grain
import tqdm
from array_record.python import array_record_module

from data_pipeline import config_check, make_example, planning, staging, tfds_format
from data_pipeline import example as example_lib

# Fields that change how the data looks; anything else (workers, paths to output) may differ.
_RUNTIME_FIELDS = (
  "data_dir",
  "num_workers",
  "loader_workers",
  "batch_size",
  "shuffle_seed",
  "prefetch_buffer",
  "labeller_timeout_s",
  "labeller_retries",
)


def fingerprint(config):
  """Hash of the config fields that determine the data (a resume must match it)."""
  content = {k: v for k, v in config.to_dict().items() if k not in _RUNTIME_FIELDS}
  return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _ItemSource(grain.sources.RandomAccessDataSource):
  """The work items of unfinished shards as a Grain random-access source."""

  def __init__(self, items):
    self._items = items

  def __len__(self):
    return len(self._items)

  def __getitem__(self, index):
    return self._items[index]


def _done_path(shard_file):
  return shard_file + ".done.json"


def run_precompute(config, progress=False):
  """Builds `{data_dir}/{name}/{version}/`; returns the manifest dict. Safe to rerun/resume."""
  config_check.validate_config(config)
  directory = tfds_format.dataset_dir(config.data_dir, config.name, config.version)
  staging_dir = os.path.join(directory, "staging")
  config_fingerprint = fingerprint(config)
  index = staging.read_staging_index(staging_dir)
  if index is not None and index["fingerprint"] != config_fingerprint:
    raise ValueError(
      f"config.data_dir: {directory} holds a precompute made with a different "
      "config; choose another data_dir or delete it"
    )
  if index is None:
    logging.info("stage 1: extracting raw slices from %s", config.source)
    raw_slices, skipped = staging.extract_raw_slices(config)
    for entry in skipped:
      logging.warning("skipped %s: %s", entry["path"], entry["reason"])
    index = staging.write_staging(staging_dir, raw_slices, skipped, config_fingerprint)
    del raw_slices
  items = planning.plan_items(index["slices"], config)
  shards = planning.shard_items(items, int(config.examples_per_shard))

  pending, expected, shard_files = [], {}, {}
  for split, split_shards in shards.items():
    for shard, shard_items in enumerate(split_shards):
      path = tfds_format.shard_path(directory, config.name, split, shard, len(split_shards))
      shard_files[(split, shard)] = path
      if os.path.exists(_done_path(path)) and os.path.exists(path):
        continue
      expected[(split, shard)] = len(shard_items)
      pending += [dict(item, shard=shard) for item in shard_items]
  logging.info(
    "stage 2: %d items in %d unfinished shards (%d finished)",
    len(pending),
    len(expected),
    len(shard_files) - len(expected),
  )
  if pending:
    _write_shards(config, staging_dir, pending, expected, shard_files, progress)
  return _finish(config, directory, shards, shard_files, index["skipped"], config_fingerprint)


def _write_shards(config, staging_dir, pending, expected, shard_files, progress):
  """Runs the Grain pipeline over `pending` items and writes each shard as it completes."""
  config_json = json.dumps(config.to_dict(), default=list)
  dataset = grain.MapDataset.source(_ItemSource(pending)).map(
    make_example.ExampleMaker(config_json, staging.RawSliceReader(staging_dir))
  )
  iterable = dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4))
  if int(config.num_workers) > 0:
    iterable = iterable.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=int(config.num_workers), per_worker_buffer_size=2)
    )
  buffers = collections.defaultdict(list)
  received = collections.Counter()
  iterator = iter(iterable)
  try:
    for result in tqdm.tqdm(
      iterator, total=len(pending), disable=not progress, desc="precompute", unit="ex"
    ):
      key = (result["split"], result["shard"])
      buffers[key].append(result)
      received[key] += 1
      if received[key] == expected[key]:
        _commit_shard(shard_files[key], buffers.pop(key))
  finally:
    close = getattr(iterator, "close", None)
    if close is not None:
      close()
  missing = [key for key in expected if received[key] != expected[key]]
  if missing:
    raise RuntimeError(f"precompute: shards {missing} did not receive all their items")


def _commit_shard(path, results):
  """Writes one shard (records in item-id order) atomically, then its `.done.json` sidecar."""
  results.sort(key=lambda r: r["id"])
  temporary = path + ".tmp"
  writer = array_record_module.ArrayRecordWriter(temporary, "group_size:1")
  counts, skipped = [], []
  for result in results:
    if result["record"] is None:
      logging.warning("skipped %s: %s", result["id"], result["reason"])
      skipped.append({"path": result["id"], "reason": result["reason"]})
      continue
    writer.write(result["record"])
    counts.append(result["meta"])
  writer.close()
  os.replace(temporary, path)
  with open(_done_path(path) + ".tmp", "w") as file:
    json.dump({"num_records": len(counts), "meta": counts, "skipped": skipped}, file)
  os.replace(_done_path(path) + ".tmp", _done_path(path))


def _finish(config, directory, shards, shard_files, skipped_inputs, config_fingerprint):
  """Writes TFDS metadata and manifest.json from the shard sidecars."""
  for stale in glob.glob(os.path.join(directory, "*.tmp")):
    os.remove(stale)
  counts = {
    name: collections.Counter() for name in ("split", "task", "severity", "modality", "simulated")
  }
  shard_lengths, skipped = {}, list(skipped_inputs)
  for split, split_shards in shards.items():
    shard_lengths[split] = []
    for shard in range(len(split_shards)):
      with open(_done_path(shard_files[(split, shard)])) as file:
        done = json.load(file)
      shard_lengths[split].append(done["num_records"])
      skipped += done["skipped"]
      for meta in done["meta"]:
        counts["split"][split] += 1
        for name in ("task", "severity", "modality"):
          counts[name][meta[name]] += 1
        counts["simulated"][str(meta["simulated"]).lower()] += 1
  if sum(sum(v) for v in shard_lengths.values()) == 0:
    raise RuntimeError(f"precompute: no example was produced; skipped: {skipped[:5]}")
  tfds_format.write_tfds_metadata(
    directory,
    config.name,
    int(config.image_size),
    {split: lengths for split, lengths in shard_lengths.items() if sum(lengths)},
    description=f"MedQ-UNI restoration pairs with quality descriptions (source "
    f"{config.source}, {config.image_size}px)",
  )
  reasons = collections.Counter(entry["reason"] for entry in skipped)
  manifest = {
    "name": config.name,
    "version": config.version,
    "source": config.source,
    "image_size": int(config.image_size),
    "fingerprint": config_fingerprint,
    "num_examples": sum(counts["split"].values()),
    "counts": {name: dict(sorted(counter.items())) for name, counter in counts.items()},
    "shard_lengths": shard_lengths,
    "skipped": {"count": len(skipped), "reasons": dict(reasons.most_common()), "items": skipped},
    "contract_fields": list(example_lib.FIELD_NAMES),
  }
  with open(os.path.join(directory, "manifest.json"), "w") as file:
    json.dump(manifest, file, indent=1)
  return manifest
