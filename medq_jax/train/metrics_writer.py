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

  def __init__(self, workdir: str, tensorboard: bool = True, resume_step: int = 0):
    """resume_step > 0: a run resumed from that step; rows after it (written before the kill)
    are dropped from metrics.jsonl and TensorBoard (SummaryWriter's purge_step)."""
    self.enabled = jax.process_index() == 0
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.enabled:
      self.truncate(resume_step)
    if self.enabled and tensorboard:
      from torch.utils.tensorboard import SummaryWriter

      self._tb = SummaryWriter(
        os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1 if resume_step else None
      )

  def truncate(self, step: int) -> int:
    """Drops the metrics.jsonl rows after `step` (a resume from `step` writes them again);
    returns how many were dropped. A torn last line (a kill mid-write) is dropped too."""
    if not self.enabled or not os.path.isfile(self.jsonl_path):
      return 0
    kept, dropped = [], 0
    with open(self.jsonl_path) as f:
      for line in f:
        try:
          row = json.loads(line)
        except ValueError:
          dropped += 1
          continue
        if row.get("step", 0) <= step:
          kept.append(line if line.endswith("\n") else line + "\n")
        else:
          dropped += 1
    with open(self.jsonl_path + ".tmp", "w") as f:
      f.writelines(kept)
    os.replace(self.jsonl_path + ".tmp", self.jsonl_path)
    if dropped:
      logging.info("metrics.jsonl: dropped %d rows after the restored step %d", dropped, step)
    return dropped

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
