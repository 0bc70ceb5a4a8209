"""Patient splits and the work plan."""

import collections

from data_pipeline import planning
from dp_testlib import load_config


def test_patient_splits_are_disjoint_and_near_fractions():
  patient_ids = [f"p{i}" for i in range(200) for _ in range(1 + i % 7)]  # Unequal slice counts.
  fractions = {"train": 0.8, "val": 0.1, "bench": 0.1}
  assignment = planning.assign_splits(patient_ids, fractions, seed=0)
  assert set(assignment) == set(patient_ids)  # One split per patient, by construction a dict.
  per_split = collections.Counter(assignment[p] for p in patient_ids)
  for split, fraction in fractions.items():
    assert abs(per_split[split] / len(patient_ids) - fraction) < 0.01, per_split
  assert planning.assign_splits(patient_ids, fractions, seed=0) == assignment
  assert planning.assign_splits(patient_ids, fractions, seed=1) != assignment


def test_zero_fraction_split_gets_no_patient():
  assignment = planning.assign_splits(
    ["a", "b", "b", "c"], {"train": 1.0, "val": 0.0, "bench": 0.0}, seed=0
  )
  assert set(assignment.values()) == {"train"}


def test_plan_gives_each_slice_its_modality_tasks_and_paired_task():
  config = load_config()
  raw_index = [
    {"key": "ct:0", "modality": "CT", "patient_id": "a", "paired": None},
    {"key": "mr:0", "modality": "MRI", "patient_id": "b", "paired": None},
    {
      "key": "pet:0",
      "modality": "PET",
      "patient_id": "c",
      "paired": {"task": "pet_lowcount", "severity": "severe", "params": {}},
    },
  ]
  items = planning.plan_items(raw_index, config)
  by_key = collections.defaultdict(list)
  for item in items:
    by_key[item["id"].rsplit(":", 2)[0]].append(item)
  assert [i["task"] for i in by_key["ct:0"]] == ["ldct"] * config.examples_per_slice_by_modality.CT
  assert len({i["severity"] for i in by_key["ct:0"]}) > 1  # Seeded draws differ per repeat.
  assert sorted(i["task"] for i in by_key["mr:0"]) == [
    "mri_motion",
    "mri_noise",
    "mri_undersampling",
  ]
  assert [(i["task"], i["severity"]) for i in by_key["pet:0"]] == [("pet_lowcount", "severe")]
  assert len({item["id"] for item in items}) == len(items)
