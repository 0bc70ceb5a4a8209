"""Deterministic work plan: patient splits stratified by modality and task, items, shard layout.

Every example of a patient is in one split (so every draw of a slice is too). Within each
modality, and each (modality, task), the splits hold close to `config.split_fractions` of the
examples, and a modality with two or more patients has patients in train and held out.
"""

import collections
import hashlib
import logging

import numpy as np

from data_pipeline import example as example_lib
from data_pipeline.degradations import example_seed


def coverage_order(fractions):
  """The splits with a positive fraction, in the order a group of few patients fills them.

  Train first, then the held-out splits by decreasing fraction, bench (where restoration is
  scored) before val on a tie.
  """
  held_out = sorted(
    (split for split in example_lib.SPLITS if split != "train"),
    key=lambda split: (-float(fractions[split]), split != "bench", split),
  )
  return [split for split in ("train", *held_out) if float(fractions[split]) > 0]


def _tiebreak(seed, patient):
  """A seeded, platform-independent order among otherwise equal patients."""
  return hashlib.sha256(f"{seed}:{patient}".encode()).hexdigest()


class _Balance:
  """Examples placed per (stratum, split) against their targets `fraction * stratum total`.

  The cost of a plan is the sum over strata and splits of ((placed - target) / total)^2, each
  stratum of a modality weighted 1 / (number of its tasks), so every modality counts the same.
  """

  def __init__(self, patient_strata, fractions):
    self.strata = patient_strata
    self.total = collections.Counter()
    for counts in patient_strata.values():
      self.total.update(counts)
    tasks = collections.Counter(modality for modality, _ in self.total)
    self.scale = {st: 1.0 / (tasks[st[0]] * self.total[st] ** 2) for st in self.total}
    self.fractions = {split: float(fractions[split]) for split in example_lib.SPLITS}
    self.placed = collections.Counter()

  def share(self, patient):
    """The patient's part of its modalities' examples (1.0: a whole modality)."""
    return sum(n * self.scale[st] * self.total[st] for st, n in self.strata[patient].items())

  def cost_increase(self, patient, split):
    increase = 0.0
    for stratum, n in self.strata[patient].items():
      gap = self.placed[stratum, split] - self.fractions[split] * self.total[stratum]
      increase += self.scale[stratum] * ((gap + n) ** 2 - gap**2)
    return increase

  def place(self, patient, split):
    for stratum, n in self.strata[patient].items():
      self.placed[stratum, split] += n


def _groups(patient_strata):
  """{(modality, None) or (modality, task): sorted patients with examples there}."""
  groups = collections.defaultdict(set)
  for patient, counts in patient_strata.items():
    for (modality, task), n in counts.items():
      if n > 0:
        groups[modality, None].add(patient)
        groups[modality, task].add(patient)
  return {group: sorted(patients) for group, patients in groups.items()}


def assign_splits(patient_strata, fractions, seed):
  """Stratified patient split: returns ({patient_id: split}, notes).

  `patient_strata` is {patient_id: {(modality, task): number of examples}}; `notes` lists, in
  words, each modality or (modality, task) with a single patient and any group whose patients
  could not cover train and held-out. Two passes, deterministic given `seed`:

  1. Coverage. Groups (each modality, then each modality/task), fewest patients first: a group
     of n patients gets patients in min(n, k) splits, k = number of splits with a positive
     fraction, filled in `coverage_order` (train, bench, val). Each missing split takes the
     group's unplaced patient that lowers the balance cost most (ties by seeded hash). A group
     with one patient puts it in train (noted).
  2. Balance. The other patients, largest share of their modalities first (ties by seeded hash),
     each to the split that lowers the cost most: the sum over its strata of
     ((placed - fraction * total) / total)^2.
  """
  order = coverage_order(fractions)
  balance = _Balance(patient_strata, fractions)
  assignment, notes = {}, []

  def assign(patient, split):
    assignment[patient] = split
    balance.place(patient, split)

  groups = _groups(patient_strata)
  for (modality, task), patients in sorted(
    groups.items(), key=lambda g: (len(g[1]), g[0][1] is not None, g[0][0], g[0][1] or "")
  ):
    name = modality if task is None else f"{modality}/{task}"
    if len(patients) == 1:
      patient = patients[0]
      if patient not in assignment:
        assign(patient, order[0])
      if task is None or len(groups[modality, None]) > 1:
        notes.append(
          f"{name}: one patient ({patient}), all its examples in {assignment[patient]}, "
          "none held out"
        )
      continue
    wanted = min(len(patients), len(order))
    covered = {assignment[p] for p in patients if p in assignment}
    for split in order:  # The first split (train) is always wanted.
      free = [p for p in patients if p not in assignment]
      if split in covered or (len(covered) >= wanted and split != order[0]) or not free:
        continue
      best = min(free, key=lambda p: (balance.cost_increase(p, split), _tiebreak(seed, p)))
      assign(best, split)
      covered.add(split)
    if len(covered) < wanted or order[0] not in covered:
      notes.append(
        f"{name}: {len(patients)} patients but only in {sorted(covered)} (their other "
        "modalities placed them first)"
      )

  rest = sorted(
    (p for p in patient_strata if p not in assignment),
    key=lambda p: (-balance.share(p), _tiebreak(seed, p)),
  )
  for patient in rest:
    assign(patient, min(order, key=lambda s: (balance.cost_increase(patient, s), order.index(s))))
  return assignment, notes


def _unsplit_items(raw_index, config):
  """The work items (no split yet) of every slice, in raw-index order."""
  severities = tuple(config.severities)
  items = []
  for index, raw in enumerate(raw_index):
    if raw.get("paired"):
      task_severities = [(raw["paired"]["task"], raw["paired"]["severity"])]
    else:
      task_severities = []
      for task in config.modality_tasks.get(raw["modality"], ()):
        if task not in config.tasks:
          continue
        repeats = config.examples_per_slice_by_modality.get(
          raw["modality"], config.examples_per_slice_task
        )
        for k in range(int(repeats)):
          rng = np.random.default_rng(
            example_seed(f"{raw['key']}:{task}:{k}:severity", config.seed)
          )
          task_severities.append((task, severities[int(rng.integers(len(severities)))]))
    for k, (task, severity) in enumerate(task_severities):
      if task in config.tasks:
        items.append(
          {"id": f"{raw['key']}:{task}:{k}", "raw_index": index, "task": task, "severity": severity}
        )
  return items


def plan_work(raw_index, config):
  """raw_index: [{key, modality, patient_id, paired}] -> (work items sorted, split notes).

  Each item: id, raw_index, task, severity, split. Unpaired slices get every configured task
  of their modality, `examples_per_slice_task` times (or the modality's entry in
  `examples_per_slice_by_modality`), severity drawn by a seeded RNG; paired (acquired) slices
  get their own task and severity. The split is the patient's (`assign_splits`, weighted by
  these items), so all draws of a slice share one split.
  """
  items = _unsplit_items(raw_index, config)
  patient_strata = collections.defaultdict(collections.Counter)
  for raw in raw_index:
    patient_strata[raw["patient_id"]]  # Patients without items still get a split.
  for item in items:
    raw = raw_index[item["raw_index"]]
    patient_strata[raw["patient_id"]][raw["modality"], item["task"]] += 1
  splits, notes = assign_splits(dict(patient_strata), config.split_fractions, config.seed)
  for item in items:
    item["split"] = splits[raw_index[item["raw_index"]]["patient_id"]]
  items.sort(key=lambda item: (example_lib.SPLITS.index(item["split"]), item["id"]))
  return items, notes


def plan_items(raw_index, config):
  """`plan_work`'s items; its split notes are logged as warnings."""
  items, notes = plan_work(raw_index, config)
  for note in notes:
    logging.warning("split: %s", note)
  return items


def split_counts(items, raw_index):
  """{(split, modality, task): number of items} of a plan (what each split holds)."""
  return collections.Counter(
    (item["split"], raw_index[item["raw_index"]]["modality"], item["task"]) for item in items
  )


def shard_items(items, examples_per_shard):
  """Groups items per split into shards: returns {split: [[item, ...], ...]}."""
  shards = {}
  for split in example_lib.SPLITS:
    split_items = [item for item in items if item["split"] == split]
    shards[split] = [
      split_items[i : i + examples_per_shard]
      for i in range(0, len(split_items), examples_per_shard)
    ]
  return shards
