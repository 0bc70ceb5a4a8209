"""launch/engine_sample_efficiency.py as a 1-budget miniature on the tiny precomputed dataset: a
2-step base, then for the budget one failure-driven engine iteration and a random-sampling run on
the same number of annotations, each fine-tuned 2 steps; the CSV, the figure, and the random
annotations checked against the pool (uniform draw, deduplicated, the oracle's labels)."""

import csv
import json
import os
import subprocess
import sys

import numpy as np

from medq_jax.engine import loop, oracle, sample_efficiency

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_one_budget_miniature(tmp_path, tiny_data_config_session, subprocess_env):
  data = tiny_data_config_session
  workdir = tmp_path / "experiment"
  flags = [
    "--config=configs/engine.py:sample_efficiency",
    f"--config.data.data_dir={data.data_dir}",
    "--config.data.max_slices_per_volume=2",
    "--config.data.examples_per_shard=8",
    "--config.data.ldct.num_angles=30",
    "--config.experiment.base_steps=2",
    "--config.experiment.budgets=(4,)",
    "--config.trainer.epochs=0",
    "--config.trainer.steps=2",
    "--config.trainer.batch_size=2",
    "--config.max_dev_images=6",
    f"--workdir={workdir}",
  ]
  env = subprocess_env()
  result = subprocess.run(
    [sys.executable, "-m", "launch.engine_sample_efficiency", *flags],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  with open(workdir / "sample_efficiency.csv", newline="") as handle:
    rows = list(csv.DictReader(handle))
  assert [(r["strategy"], r["images_budget"]) for r in rows] == [
    ("base", "0"),
    ("failure-driven", "4"),
    ("random", "4"),
  ]
  for budget in ("4",):
    pair = [r for r in rows if r["images_budget"] == budget]
    assert pair[0]["annotations"] == pair[1]["annotations"] != "0"  # equal annotation budgets
    assert pair[0]["steps"] == pair[1]["steps"] == "2"
  for row in rows:
    assert 0.0 <= float(row["test_accuracy"]) <= 1.0 and int(row["test_items"]) > 0
  with open(workdir / "sample_efficiency.png", "rb") as handle:
    assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
  # The random annotations: distinct pool MCQs, labelled by the same offline oracle.
  pool = loop.load_split(data, "train", descriptions=False)
  with open(workdir / "random_b4" / "iter_0" / "data.jsonl") as handle:
    drawn = [json.loads(line) for line in handle]
  items = {i.id: i for i in pool.items}
  assert len({r["id"] for r in drawn}) == len(drawn) == int(rows[-1]["annotations"])
  truth = oracle.OfflineOracle({i.id: i.answer for i in pool.items}, 0.1, 0)
  answers = truth.annotate(
    [oracle.OracleRequest(r["id"], r["question"], None, items[r["id"]].options) for r in drawn]
  ).answers
  assert all(r["answer"] == answers[r["id"]].text for r in drawn)


def test_random_annotations_uniform_and_deduplicated():
  rng = np.random.default_rng(0)
  images = {f"p{i}:low": rng.random((32, 32)).astype(np.float32) for i in range(40)}
  dev_copy = {"d0:low": images["p3:low"].copy()}
  items = [
    loop.Item(
      f"p{i}:low#q0", f"p{i}:low", "q?", {"A": "yes", "B": "no"}, "A", "CT", "Yes-or-No", "mild"
    )
    for i in range(40)
  ]
  pool = loop.Split(images, items)
  dev, test = loop.Split(dev_copy, []), loop.Split({}, [])
  labels = oracle.OfflineOracle({i.id: i.answer for i in items}, 0.0)
  draws = [
    {r["image_id"] for r in sample_efficiency.random_annotations(pool, dev, test, 10, labels, s)}
    for s in range(60)
  ]
  assert all(len(d) == 10 and "p3:low" not in d for d in draws)  # the dev duplicate is never drawn
  counts = np.array([sum(f"p{i}:low" in d for d in draws) for i in range(40) if i != 3])
  assert counts.sum() == 600 and counts.min() > 3 and counts.max() < 35  # about 15 each
