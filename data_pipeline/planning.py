"""Deterministic work plan: patient splits, (slice, task, severity) items and shard layout."""

import collections
import hashlib

import numpy as np

from data_pipeline import example as example_lib
from data_pipeline.degradations import example_seed


def assign_splits(patient_ids, fractions, seed):
  """Maps each patient to one split; returns {patient_id: split}. No patient is in two splits.

  `patient_ids` has one entry per slice, so patients are weighted by their slice count.
  Greedy balancing: patients in order of decreasing weight (ties by a seeded hash) go to the
  split furthest below its target share `fractions[split] * total`, so the example fractions
  come close to the configured ones even with few, unequal patients.
  """
  weights = collections.Counter(patient_ids)
  total = sum(weights.values())
  order = sorted(
    weights, key=lambda p: (-weights[p], hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
  )
  filled = dict.fromkeys(example_lib.SPLITS, 0)
  assignment = {}
  for patient in order:
    split = max(
      example_lib.SPLITS,
      key=lambda s: (float(fractions[s]) * total - filled[s], float(fractions[s])),
    )
    assignment[patient] = split
    filled[split] += weights[patient]
  return assignment


def plan_items(raw_index, config):
  """raw_index: [{key, modality, patient_id, paired}] -> list of work items (dicts), sorted.

  Each item: id, raw_index, task, severity, k, split. Unpaired slices get every configured
  task of their modality, `examples_per_slice_task` times (or the modality's entry in
  `examples_per_slice_by_modality`), severity drawn by a seeded RNG;
  paired (acquired) slices get their own task and severity.
  """
  splits = assign_splits([r["patient_id"] for r in raw_index], config.split_fractions, config.seed)
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
      if task not in config.tasks:
        continue
      items.append(
        {
          "id": f"{raw['key']}:{task}:{k}",
          "raw_index": index,
          "task": task,
          "severity": severity,
          "split": splits[raw["patient_id"]],
        }
      )
  items.sort(key=lambda item: (example_lib.SPLITS.index(item["split"]), item["id"]))
  return items


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
