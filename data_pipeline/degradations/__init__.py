"""The degradation tasks behind one function, each deterministic given (example id, seed).

Each module of this package holds one degradation and registers it (`registry.py`); `degrade`
dispatches by task name through the registry. Adding a degradation is one new module here
(see docs/data_pipeline.md, "Adding a degradation").
"""

import hashlib

import numpy as np

from data_pipeline.degradations import registry


def example_seed(example_id, seed):
  """A 63-bit seed from (example id, global seed): the same pair always degrades the same way."""
  digest = hashlib.sha256(f"{int(seed)}:{example_id}".encode()).digest()
  return int.from_bytes(digest[:8], "little") >> 1


def degrade(task, image, severity, config, seed):
  """image: float32 [S, S] in [0, 1] -> (low float32 [S, S] in [0, 1], params dict).

  `config` is the data config; its sub-config `config.<task>` holds the task's parameters,
  per-severity ones as one value per severity (mild, moderate, severe).
  """
  degradation = registry.get(task)
  params = degradation.params_at(config[task], severity)
  low, record = degradation.simulate(image, params, np.random.default_rng(seed), seed)
  record.update(task=task, severity=severity, seed=int(seed))
  return low, record
