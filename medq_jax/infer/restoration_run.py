"""Assess-then-restore over a dataset split: the evaluated cases a restoration report reads.

Reads the split through the one data loader (no shuffle, one epoch), restores each batch with
one jitted `AssessRestore` (the last batch padded to the same shape, so nothing recompiles),
and returns plain dicts (id, modality, task, severity, degraded, restored, reference,
vae_reconstruction, description, reference_description, extra) that `medq_jax.bench`'s report
turns into tables, leaving infer and bench independent.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from data_pipeline import loader as data_loader
from medq_jax.infer.assess_restore import AssessRestore


def _pad(array: np.ndarray, size: int) -> np.ndarray:
  if len(array) == size:
    return array
  return np.concatenate([array, np.repeat(array[-1:], size - len(array), axis=0)])


def restore_split(
  engine: AssessRestore,
  data_config,
  split: str,
  *,
  batch_size: int,
  max_examples: int = 0,
  tasks: tuple[str, ...] = (),
  progress: Callable[[str], None] = print,
) -> list[dict]:
  """Runs the engine over `split` of the precomputed dataset (`data_config`); max_examples > 0
  stops early, `tasks` keeps only those tasks. Returns one dict per example."""
  batches = data_loader.one_pass(data_config, split, batch_size)
  size = engine.spec.vae_image_size
  records: list[dict] = []
  start = time.perf_counter()
  for batch in batches:
    keep = np.asarray([not tasks or str(t) in tasks for t in batch["task"]])
    if max_examples:
      keep &= np.cumsum(keep) + len(records) <= max_examples
    if not keep.any():
      if max_examples and len(records) >= max_examples:
        break
      continue
    batch = {key: np.asarray(value)[keep] for key, value in batch.items()}
    low, high = batch["low"], batch["high"]
    if low.shape[1:] != (size, size):
      raise ValueError(
        f"{data_config.data_dir} split {split!r}: images are {low.shape[1:]}, the model's VAE "
        f"side is {size} (set data.image_size={size} and precompute again)"
      )
    count = len(low)
    instructions = [str(text) for text in batch["instruction"]]
    padded = lambda x: _pad(np.asarray(x), batch_size)
    result = engine(padded(low), list(padded(np.asarray(instructions, object))))
    ceiling = engine.reconstruct(padded(high))
    for index in range(count):
      records.append(
        dict(
          id=str(batch["id"][index]),
          modality=str(batch["modality"][index]),
          task=str(batch["task"][index]),
          severity=str(batch["severity"][index]),
          degraded=low[index],
          restored=result.restored[index],
          reference=high[index],
          vae_reconstruction=ceiling[index],
          description=result.descriptions[index],
          reference_description=str(batch["description"][index]),
          extra=dict(description_truncated=bool(result.truncated[index])),
        )
      )
    elapsed = time.perf_counter() - start
    progress(
      f"evaluate: {len(records)} images of {split!r} restored ({elapsed:.0f} s, "
      f"{len(records) / elapsed:.2f} images/s)"
    )
    if max_examples and len(records) >= max_examples:
      break
  if not records:
    raise ValueError(
      f"{data_config.data_dir} split {split!r}: no examples"
      + (f" of tasks {list(tasks)}" if tasks else "")
    )
  return records
