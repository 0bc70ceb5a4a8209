"""Stage 1 of the precompute: sources -> normalised raw slices in a staging ArrayRecord file.

`raw_slices.array_record` holds one pickled RawSlice dict per record (random access for the
Grain workers of stage 2); `raw_index.json` (written last, atomically) lists key, modality and
patient per record plus every skipped input, and marks the stage as finished.
"""

import dataclasses
import json
import os
import pickle

import grain
from array_record.python import array_record_module

from data_pipeline import atomic_files, sources_datasets, sources_sample

RAW_FILE = "raw_slices.array_record"
INDEX_FILE = "raw_index.json"

_SOURCES = {
  "medq-sample": sources_sample.build_sample_slices,
  "ixi": sources_datasets.ixi_slices,
  "aapm_mayo": sources_datasets.aapm_mayo_slices,
  "udpet": sources_datasets.udpet_slices,
  "folder": sources_datasets.folder_slices,
}


def extract_raw_slices(config):
  """Returns (list of RawSlice, skipped [{path, reason}]) for config.source."""
  skipped = []
  raw = _SOURCES[config.source](config, skipped)
  keys = [r.key for r in raw]
  if len(set(keys)) != len(keys):
    raise RuntimeError("duplicate raw slice keys; the source adapter is broken")
  return raw, skipped


def write_staging(directory, raw_slices, skipped, fingerprint):
  """Writes the staging ArrayRecord file and, last, the index that marks it complete."""
  os.makedirs(directory, exist_ok=True)
  writer = array_record_module.ArrayRecordWriter(os.path.join(directory, RAW_FILE), "group_size:1")
  index = []
  for raw in raw_slices:
    writer.write(pickle.dumps(dataclasses.asdict(raw), protocol=pickle.HIGHEST_PROTOCOL))
    index.append(
      {"key": raw.key, "modality": raw.modality, "patient_id": raw.patient_id, "paired": raw.paired}
    )
  writer.close()
  payload = {"fingerprint": fingerprint, "slices": index, "skipped": skipped}
  temporary = os.path.join(directory, INDEX_FILE + ".tmp")
  with open(temporary, "w") as file:
    json.dump(payload, file)
  os.replace(temporary, os.path.join(directory, INDEX_FILE))
  return payload


def read_staging_index(directory):
  """The staging index, or None if stage 1 has not finished in `directory`."""
  return atomic_files.read_json(
    os.path.join(directory, INDEX_FILE),
    "unreadable staging index",
    hint="delete it to stage the raw slices again",
  )


class RawSliceReader:
  """Random access to staged raw slices (picklable: opens the file lazily in each process)."""

  def __init__(self, directory):
    self.path = os.path.join(directory, RAW_FILE)
    self._source = None

  def __getstate__(self):
    return {"path": self.path, "_source": None}

  def __getitem__(self, index):
    if self._source is None:
      self._source = grain.sources.ArrayRecordDataSource([self.path])
    return pickle.loads(self._source[int(index)])
