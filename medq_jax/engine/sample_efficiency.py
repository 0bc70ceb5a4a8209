"""The sample-efficiency experiment's pieces (the paper's Fig. 3 c, f): the random-sampling
baseline's annotations, the accuracy both strategies are measured with, the table and the plot.
`launch/engine_sample_efficiency.py` runs the experiment.

Random sampling draws pool items (image + question) uniformly at random, seeded, after the
same image deduplication against dev and test as the engine's; the oracle labels them as it
labels the engine's samples; every label is kept (what the engine's auto-accepted review at
iteration 0 keeps). Its budget is the engine's number of accumulated annotations, so both
strategies fine-tune on equally many annotations.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence

import numpy as np

from data_pipeline import atomic_files
from medq_jax.engine import dedup
from medq_jax.engine import loop as loop_lib
from medq_jax.engine import oracle as oracle_lib

COLUMNS = ("strategy", "images_budget", "annotations", "steps", "test_accuracy", "test_items")


def random_annotations(
  pool, dev, test, count: int, oracle, seed: int, max_distance: int = 4, mcq_only: bool = True
) -> list[dict]:
  """`count` pool items drawn uniformly at random (seeded, images duplicating dev or test
  dropped first), labelled by `oracle` (items it cannot answer are dropped): rows in the
  engine's `data.jsonl` format."""
  refs = {
    "dev": {i: dedup.phash(im) for i, im in dev.images.items()},
    "test": {i: dedup.phash(im) for i, im in test.images.items()},
  }
  hashes = {i: dedup.phash(im) for i, im in pool.images.items()}
  kept = set(dedup.dedup_images(hashes, refs, max_distance).kept)
  candidates = [i for i in pool.items if i.image_id in kept and (i.options or not mcq_only)]
  if count > len(candidates):
    raise ValueError(f"random sampling: budget {count} above the {len(candidates)} pool items")
  order = np.random.default_rng(seed).permutation(len(candidates))
  rows, at = [], 0
  while len(rows) < count and at < len(order):
    batch = [candidates[k] for k in order[at : at + count - len(rows)]]
    at += len(batch)
    requests = [
      oracle_lib.OracleRequest(i.id, i.question, pool.images[i.image_id], i.options) for i in batch
    ]
    answers = oracle.annotate(requests, salt="random").answers
    for item in batch:
      if answers[item.id].text is None:
        continue
      rows.append(
        {
          "id": item.id,
          "image_id": item.image_id,
          "question": item.question,
          "options": item.options,
          "answer": answers[item.id].text,
          "source": "random:oracle",
          "modality": item.modality,
          "question_type": item.question_type,
          "degradation_level": item.degradation_level,
        }
      )
  return rows


def write_rows(rows: Sequence[dict], path: str) -> None:
  atomic_files.atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def mcq_accuracy(model, split) -> tuple[float, int]:
  """(greedy accuracy, item count) of `model` on the split's perception MCQs."""
  items = [i for i in split.items if i.options]
  if not items:
    raise ValueError("accuracy: the split has no MCQ items")
  right = [
    sorted(i.options)[int(np.argmax(loop_lib.option_log_probs(model, split.images[i.image_id], i)))]
    == i.answer
    for i in items
  ]
  return float(np.mean(right)), len(items)


def write_table(rows: Sequence[dict], path: str) -> None:
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
  writer.writeheader()
  writer.writerows({k: row[k] for k in COLUMNS} for row in rows)
  atomic_files.atomic_write_text(path, buffer.getvalue())


def plot(rows: Sequence[dict], path: str, title: str) -> str:
  """Test accuracy against annotations, one curve per strategy (the base model at 0 in both),
  as the paper's Fig. 3 (c, f)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  figure, axis = plt.subplots(figsize=(5.0, 3.6), dpi=120)
  base = [r for r in rows if r["strategy"] == "base"]
  styles = {"failure-driven": ("tab:red", "o"), "random": ("tab:blue", "s")}
  for strategy, (color, marker) in styles.items():
    points = sorted(
      [(0, base[0]["test_accuracy"])] * bool(base)
      + [(r["annotations"], r["test_accuracy"]) for r in rows if r["strategy"] == strategy]
    )
    if len(points) > int(bool(base)):
      axis.plot(*zip(*points), color=color, marker=marker, label=strategy)
  axis.set_xlabel("annotations (fine-tuning samples)")
  axis.set_ylabel("test perception accuracy")
  axis.set_title(title, fontsize=9)
  axis.grid(alpha=0.3)
  axis.legend()
  figure.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path)
  plt.close(figure)
  return path
