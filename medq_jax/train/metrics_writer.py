"""Per-step metrics to stdout, `workdir/metrics.jsonl` and TensorBoard (`workdir/tensorboard`,
written with torch's SummaryWriter: TensorBoard event files without TensorFlow). Process 0 only.
"""

from __future__ import annotations

import json
import logging
import os

import jax


class MetricsWriter:
  """Writes a dict of floats per step; `close()` flushes the event file."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.enabled and tensorboard:
      from torch.utils.tensorboard import SummaryWriter

      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict[str, float]) -> None:
    logging.info(
      "step %d: %s", step, " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "step")
    )
    if not self.enabled:
      return
    with open(self.jsonl_path, "a") as f:
      f.write(json.dumps(dict(metrics, step=step)) + "\n")
    if self._tb is not None:
      for key, value in metrics.items():
        if key != "step":
          self._tb.add_scalar(f"train/{key}", value, step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
