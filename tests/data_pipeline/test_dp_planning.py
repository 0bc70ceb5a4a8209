"""Patient splits stratified by modality and task, and the work plan, checked by counting."""

import collections
import logging

import pytest

from data_pipeline import planning, sources_sample
from dp_testlib import load_config

HELD_OUT = ("val", "bench")


def _raw_index(patients):
  """patients: [(modality, patient_id, number of slices)] -> a raw index (one entry per slice)."""
  return [
    {
      "key": f"{patient}:{modality}:{k}",
      "modality": modality,
      "patient_id": patient,
      "paired": None,
    }
    for modality, patient, slices in patients
    for k in range(slices)
  ]


def _synthetic_index():
  """MRI 60 patients of 1-7 slices, CT 15 of 1-3, PET simulated from 8 of the MRI patients
  (same patient ids, as medq-sample does), one fundus patient."""
  patients = [("MRI", f"p{i}", 1 + i % 7) for i in range(60)]
  patients += [("CT", f"ct{i}", 1 + i % 3) for i in range(15)]
  patients += [("PET", f"p{i}", 5) for i in range(8)]
  return _raw_index(patients + [("fundus", "eye", 1)])


def _by_modality(items, raw_index):
  """{modality: ({split: examples}, {split: set of patients})} counted from the plan."""
  examples = collections.defaultdict(collections.Counter)
  patients = collections.defaultdict(lambda: collections.defaultdict(set))
  for item in items:
    raw = raw_index[item["raw_index"]]
    examples[raw["modality"]][item["split"]] += 1
    patients[raw["modality"]][item["split"]].add(raw["patient_id"])
  return {m: (examples[m], patients[m]) for m in examples}


def _check_disjoint(items, raw_index):
  """No patient, and no slice (all its draws and tasks), in two splits."""
  by_patient, by_slice = collections.defaultdict(set), collections.defaultdict(set)
  for item in items:
    raw = raw_index[item["raw_index"]]
    by_patient[raw["patient_id"]].add(item["split"])
    by_slice[raw["key"]].add(item["split"])
  assert all(len(s) == 1 for s in by_patient.values()), by_patient
  assert all(len(s) == 1 for s in by_slice.values()), by_slice


def test_stratified_split_covers_each_modality_near_its_fractions():
  config = load_config()
  raw_index = _synthetic_index()
  items, notes = planning.plan_work(raw_index, config)
  _check_disjoint(items, raw_index)
  stats = _by_modality(items, raw_index)
  for modality, tolerance in (("MRI", 0.05), ("CT", 0.05), ("PET", 0.125)):
    examples, patients = stats[modality]
    total = sum(examples.values())
    assert all(patients[split] for split in ("train", *HELD_OUT)), (modality, patients)
    for split, fraction in config.split_fractions.items():
      assert abs(examples[split] / total - fraction) <= tolerance, (modality, examples)
  # Each task of a modality is stratified too (here every MRI slice has all three tasks).
  tasks = collections.Counter(
    (item["split"], item["task"])
    for item in items
    if raw_index[item["raw_index"]]["modality"] == "MRI"
  )
  assert len({tasks["train", t] for t in config.modality_tasks.MRI}) == 1
  assert stats["fundus"][1].keys() == {"train"}
  assert notes == ["fundus: one patient (eye), all its examples in train, none held out"]
  assert planning.plan_work(raw_index, config) == (items, notes)  # Deterministic.
  config.seed = 1
  assert planning.plan_work(raw_index, config)[0] != items  # The seed breaks ties.


def test_two_patients_go_to_train_and_the_larger_held_out_split():
  config = load_config()
  raw_index = _raw_index([("CT", "a", 1), ("CT", "b", 2)])
  items, notes = planning.plan_work(raw_index, config)
  patients = _by_modality(items, raw_index)["CT"][1]
  assert {split: sorted(p) for split, p in patients.items()} == {"train": ["b"], "bench": ["a"]}
  assert notes == []
  config.split_fractions.update({"train": 0.8, "val": 0.15, "bench": 0.05})
  patients = _by_modality(planning.plan_items(raw_index, config), raw_index)["CT"][1]
  assert set(patients) == {"train", "val"}


def test_single_patient_modality_goes_to_train_and_is_logged(caplog):
  config = load_config()
  raw_index = _raw_index([("MRI", f"m{i}", 2) for i in range(5)] + [("CT", "only", 3)])
  with caplog.at_level(logging.WARNING):
    items = planning.plan_items(raw_index, config)
  stats = _by_modality(items, raw_index)
  assert dict(stats["CT"][1]) == {"train": {"only"}}
  assert all(stats["MRI"][1][split] for split in ("train", *HELD_OUT))
  assert "CT: one patient (only), all its examples in train" in caplog.text


def test_many_unequal_patients_come_within_one_percent_of_the_fractions():
  weights = {f"p{i}": {("MRI", "mri_noise"): 1 + i % 7} for i in range(200)}
  fractions = {"train": 0.8, "val": 0.1, "bench": 0.1}
  assignment, notes = planning.assign_splits(weights, fractions, seed=0)
  assert set(assignment) == set(weights) and notes == []
  per_split = collections.Counter()
  for patient, split in assignment.items():
    per_split[split] += weights[patient]["MRI", "mri_noise"]
  total = sum(per_split.values())
  for split, fraction in fractions.items():
    assert abs(per_split[split] / total - fraction) < 0.01, per_split
  assert planning.assign_splits(weights, fractions, seed=0) == (assignment, notes)
  assert planning.assign_splits(weights, fractions, seed=1)[0] != assignment


def test_zero_fraction_split_gets_no_patient():
  weights = {p: {("CT", "ldct"): n} for p, n in (("a", 1), ("b", 2), ("c", 1))}
  assignment, _ = planning.assign_splits(weights, {"train": 1.0, "val": 0.0, "bench": 0.0}, 0)
  assert set(assignment.values()) == {"train"}
  assignment, _ = planning.assign_splits(weights, {"train": 0.5, "val": 0.0, "bench": 0.5}, 0)
  assert set(assignment.values()) == {"train", "bench"}


@pytest.mark.parametrize(
  "fractions, order",
  [
    ({"train": 0.8, "val": 0.1, "bench": 0.1}, ["train", "bench", "val"]),
    ({"train": 0.7, "val": 0.2, "bench": 0.1}, ["train", "val", "bench"]),
    ({"train": 0.9, "val": 0.0, "bench": 0.1}, ["train", "bench"]),
  ],
)
def test_coverage_order(fractions, order):
  assert planning.coverage_order(fractions) == order


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


def test_medq_sample_holds_out_ct_and_pet():
  """The real raw index (no images degraded): CT and PET are in train and held out."""
  config = load_config()
  config.max_slices_per_volume = 2
  skipped = []
  raw_slices = sources_sample.build_sample_slices(config, skipped)
  raw_index = [
    {"key": r.key, "modality": r.modality, "patient_id": r.patient_id, "paired": r.paired}
    for r in raw_slices
  ]
  items, notes = planning.plan_work(raw_index, config)
  _check_disjoint(items, raw_index)
  stats = _by_modality(items, raw_index)
  assert len(set().union(*stats["CT"][1].values())) >= 6, skipped  # Six CT patients.
  for modality, splits in (("CT", ("train", *HELD_OUT)), ("MRI", ("train", *HELD_OUT))):
    assert all(stats[modality][1][split] for split in splits), (modality, stats[modality])
  assert stats["PET"][1]["train"] and stats["PET"][1]["bench"], stats["PET"]
  assert notes == ["fundus: one patient (skimage/retina), all its examples in train, none held out"]
  counts = planning.split_counts(items, raw_index)
  assert sum(counts.values()) == len(items) and counts["bench", "CT", "ldct"] > 0
