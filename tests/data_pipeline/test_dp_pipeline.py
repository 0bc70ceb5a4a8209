"""medq-sample -> ArrayRecord (Grain precompute) -> TFDS data source -> Grain loader, end to end."""

import json
import os
import pathlib

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipeline import example as example_lib
from data_pipeline import loader, precompute, tfds_format


def _all_examples(config):
  examples = []
  for split in example_lib.SPLITS:
    source = tfds.data_source(config.name, data_dir=os.path.join(config.data_dir), split=split)
    examples += [tfds_format.from_stored(source[i]) for i in range(len(source))]
  return examples


def test_manifest_counts_match_records_and_contract(built_sample):
  config, manifest = built_sample
  examples = _all_examples(config)
  assert len(examples) == manifest["num_examples"] > 20
  for example in examples:
    example_lib.validate_example(example, image_size=config.image_size)
  for name in ("task", "severity", "modality", "split"):
    counted = {}
    for example in examples:
      counted[example[name]] = counted.get(example[name], 0) + 1
    assert counted == manifest["counts"][name], name
  assert set(manifest["counts"]["task"]) == set(example_lib.TASKS)
  assert set(manifest["counts"]["modality"]) == {"CT", "MRI", "PET", "fundus"}
  assert len({example["id"] for example in examples}) == len(examples)


def test_splits_are_disjoint_by_patient_and_provenance_is_recorded(built_sample):
  config, _ = built_sample
  examples = _all_examples(config)
  patients = {}
  for example in examples:
    patients.setdefault(example["patient_id"], set()).add(example["split"])
    provenance = json.loads(example["provenance"])
    assert {"package", "file", "slice"} <= set(provenance), provenance
    params = json.loads(example["degradation_params"])
    assert params["task"] == example["task"] and params["severity"] == example["severity"]
    assert example["simulated"] == (example["modality"] == "PET")
    assert example["description"].endswith(
      f"Overall, the quality of this image is {example['quality_label']}."
    )
    assert example["quality_label"] == config.quality_label_by_severity[example["severity"]]
  assert all(len(splits) == 1 for splits in patients.values()), patients
  assert {split for splits in patients.values() for split in splits} == set(example_lib.SPLITS)


def _decoded_shard(path, image_size):
  records = grain.sources.ArrayRecordDataSource([path])
  features = tfds_format.features(image_size)
  return [
    tfds_format.from_stored(features.deserialize_example_np(records[i]))
    for i in range(len(records))
  ]


def _assert_same_examples(first, second):
  assert len(first) == len(second) > 0
  for a, b in zip(first, second):
    for key in example_lib.FIELD_NAMES:
      np.testing.assert_array_equal(a[key], b[key])


def test_rebuild_is_deterministic_and_resume_skips_finished_shards(built_sample, tmp_path):
  config, manifest = built_sample
  directory = tfds_format.dataset_dir(config.data_dir, config.name, config.version)
  train_shards = sorted(
    f for f in os.listdir(directory) if "-train.array_record-" in f and not f.endswith(".json")
  )
  assert len(train_shards) >= 2
  kept, killed = train_shards[0], train_shards[-1]
  kept_before = pathlib.Path(directory, kept).read_bytes()
  killed_before = _decoded_shard(os.path.join(directory, killed), config.image_size)
  kept_mtime = os.stat(os.path.join(directory, kept)).st_mtime_ns
  # Simulate a kill: the last shard and its done marker are gone, a partial temp file remains.
  os.remove(os.path.join(directory, killed))
  os.remove(os.path.join(directory, killed + ".done.json"))
  with open(os.path.join(directory, killed + ".tmp"), "wb") as file:
    file.write(b"partial")
  config.num_workers = 0
  resumed = precompute.run_precompute(config)
  config.num_workers = 2
  assert os.stat(os.path.join(directory, kept)).st_mtime_ns == kept_mtime  # Not redone.
  assert pathlib.Path(directory, kept).read_bytes() == kept_before
  # Redone with the same content (proto map order in the bytes may differ between processes).
  _assert_same_examples(
    _decoded_shard(os.path.join(directory, killed), config.image_size), killed_before
  )
  assert not os.path.exists(os.path.join(directory, killed + ".tmp"))
  assert resumed["counts"] == manifest["counts"]


def _batches(iterator, count):
  return [next(iterator) for _ in range(count)]


def _assert_same_batches(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert set(a) == set(example_lib.FIELD_NAMES)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_batches_and_state_restore(built_sample, workers):
  config, _ = built_sample
  dataset = loader.make_loader(config, "train", worker_count=workers, shard_index=0, shard_count=1)
  iterator = iter(dataset)
  head = _batches(iterator, 3)
  batch = head[0]
  size = config.image_size
  assert batch["low"].shape == (config.batch_size, size, size)
  assert batch["low"].dtype == np.float32 and batch["high"].dtype == np.float32
  assert batch["low"].min() >= 0.0 and batch["high"].max() <= 1.0
  assert batch["id"].shape == (config.batch_size,) and isinstance(batch["id"][0], str)
  state = iterator.get_state()
  expected = _batches(iterator, 4)
  close = getattr(iterator, "close", None)
  if close:
    close()
  restored = iter(
    loader.make_loader(config, "train", worker_count=workers, shard_index=0, shard_count=1)
  )
  restored.set_state(state)
  _assert_same_batches(_batches(restored, 4), expected)
  fresh = iter(loader.make_loader(config, "train", worker_count=0, shard_index=0, shard_count=1))
  _assert_same_batches(_batches(fresh, 3), head)  # Workers do not change the order.
  for it in (restored, fresh):
    if getattr(it, "close", None):
      it.close()


def test_loader_epochs_shuffle_and_host_shards(built_sample):
  config, manifest = built_sample
  total = manifest["counts"]["split"]["train"]

  def ids(num_epochs=1, **kwargs):
    batches = loader.make_loader(
      config,
      "train",
      worker_count=0,
      batch_size=1,
      num_epochs=num_epochs,
      drop_remainder=False,
      **kwargs,
    )
    return [str(batch["id"][0]) for batch in batches]

  ordered = ids(shuffle=False, shard_index=0, shard_count=1)
  shuffled = ids(shuffle=True, shard_index=0, shard_count=1)
  assert len(ordered) == total and sorted(ordered) == sorted(shuffled) and ordered != shuffled
  host0 = ids(shuffle=True, shard_index=0, shard_count=2)
  host1 = ids(shuffle=True, shard_index=1, shard_count=2)
  assert not set(host0) & set(host1) and sorted(host0 + host1) == sorted(ordered)
  two_epochs = ids(num_epochs=2, shuffle=True, shard_index=0, shard_count=1)
  assert len(two_epochs) == 2 * total
  assert sorted(two_epochs[total:]) == sorted(ordered)


class _RejectTask:
  """An example transform that rejects one task's examples and keeps the id of the rest."""

  def __init__(self, task):
    self.task = task

  def __call__(self, example):
    if example["task"] == self.task:
      raise ValueError(f"task {self.task} rejected")
    return {"id": example["id"], "task": example["task"]}


def test_loader_transform_skips_without_shortening_batches(built_sample):
  """Rejected examples are skipped and counted; every batch still has batch_size rows, and one
  epoch yields exactly the accepted examples."""
  config, _ = built_sample
  everything = loader.make_loader(
    config,
    "train",
    worker_count=0,
    batch_size=1,
    num_epochs=1,
    drop_remainder=False,
    shard_index=0,
    shard_count=1,
  )
  tasks = {str(b["id"][0]): str(b["task"][0]) for b in everything}
  rejected = sorted(set(tasks.values()))[0]
  kept = sorted(i for i, t in tasks.items() if t != rejected)
  assert 0 < len(kept) < len(tasks)
  batches = list(
    loader.make_loader(
      config,
      "train",
      worker_count=0,
      batch_size=3,
      num_epochs=1,
      drop_remainder=False,
      shard_index=0,
      shard_count=1,
      transform=_RejectTask(rejected),
      transform_errors=(ValueError,),
    )
  )
  assert all(len(b["id"]) == 3 for b in batches[:-1])
  assert sorted(str(i) for b in batches for i in b["id"]) == kept
  assert rejected not in {str(t) for b in batches for t in b["task"]}
