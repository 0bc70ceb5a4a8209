"""Stage 2 per item: raw slice + (task, severity) -> contract example -> serialized TFDS record.

`make_example` is pure given (raw slice, item, config): it runs inside Grain worker processes
during the precompute and in-process for the on-the-fly benchmark.
"""

import json

import grain
import ml_collections
import numpy as np

from data_pipeline import (
  chat_client,
  degradations,
  descriptions,
  pseudo_labeller,
  readers,
  tfds_format,
)
from data_pipeline import example as example_lib


def make_example(raw, item, config, labeller):
  """raw: RawSlice dict; item: {id, task, severity, split} -> contract example dict.

  Acquired pairs keep their real low-quality slice; otherwise the task's degradation runs with
  the seed derived from (example id, config.seed).
  """
  high = np.asarray(raw["image"], np.float32)
  readers.check_pixels(high, raw["key"])
  seed = degradations.example_seed(item["id"], config.seed)
  if raw.get("paired_low") is not None:
    low = np.asarray(raw["paired_low"], np.float32)
    params = dict(raw["paired"]["params"], task=item["task"], severity=item["severity"])
  else:
    low, params = degradations.degrade(item["task"], high, item["severity"], config, seed)
  if not np.all(np.isfinite(low)):
    raise readers.BadInput(raw["key"], f"degradation {item['task']} produced NaN/Inf")
  meta = {
    "modality": raw["modality"],
    "anatomy": raw["anatomy"],
    "task": item["task"],
    "severity": item["severity"],
    "quality_label": descriptions.quality_label(item["severity"], config, item["task"]),
  }
  text_seed = degradations.example_seed(item["id"] + ":text", config.seed)
  example = {
    "id": item["id"],
    "split": item["split"],
    "patient_id": raw["patient_id"],
    "low": low.astype(np.float32),
    "high": high,
    "modality": raw["modality"],
    "anatomy": raw["anatomy"],
    "task": item["task"],
    "severity": item["severity"],
    "quality_label": meta["quality_label"],
    "degradation_params": json.dumps(params, sort_keys=True),
    "provenance": json.dumps(raw["provenance"], sort_keys=True, default=str),
    "simulated": bool(raw["simulated"]),
    "instruction": descriptions.instruction(text_seed + 1),
    "description": labeller.describe(meta, low, text_seed),
  }
  return example_lib.validate_example(example)


def config_from_json(config_json):
  """Rebuilds the (plain, unlocked) data config inside a worker process."""
  return ml_collections.ConfigDict(json.loads(config_json))


class ExampleMaker(grain.transforms.Map):
  """Grain map for the precompute: work item -> {split, shard, record bytes | skip reason}.

  Module-level and picklable (config travels as JSON); heavy objects are built lazily once per
  worker process. Failures never raise: they come back as {'record': None, 'reason': ...}.
  """

  def __init__(self, config_json, raw_reader):
    self.config_json = config_json
    self.raw_reader = raw_reader
    self._state = None

  def __getstate__(self):
    return {"config_json": self.config_json, "raw_reader": self.raw_reader, "_state": None}

  def _lazy(self):
    if self._state is None:
      import torch

      torch.set_num_threads(1)  # One core per worker; workers are the parallelism.
      config = config_from_json(self.config_json)
      self._state = (
        config,
        pseudo_labeller.make_labeller(config),
        tfds_format.features(int(config.image_size)),
      )
    return self._state

  def map(self, item):
    config, labeller, features = self._lazy()
    result = {
      "split": item["split"],
      "shard": item["shard"],
      "id": item["id"],
      "record": None,
      "reason": None,
      "meta": None,
    }
    try:
      raw = self.raw_reader[item["raw_index"]]
      example = make_example(raw, item, config, labeller)
      result["record"] = features.serialize_example(tfds_format.to_stored(example))
      result["meta"] = {
        "task": example["task"],
        "severity": example["severity"],
        "modality": example["modality"],
        "simulated": example["simulated"],
      }
    except chat_client.ChatAuthError:
      raise  # A refused key fails every item alike: stop the precompute instead of skipping all.
    except Exception as error:  # pylint: disable=broad-except  # One bad item never stops a run.
      result["reason"] = f"{type(error).__name__}: {error}"[:300]
    return result
