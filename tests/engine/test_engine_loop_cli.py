"""medq-engine as a user runs it, on a tiny precomputed built-in dataset: an unattended run
prints and writes its statistics and stops; a corrupt state file is one FATAL line naming it."""

import csv
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def data_dir(tiny_data_config_session):
  return tiny_data_config_session.data_dir


def _engine(env, data_dir, workdir, *args):
  flags_ = [
    "--config=configs/engine.py:runlocal",
    f"--config.data.data_dir={data_dir}",
    "--config.data.max_slices_per_volume=2",
    "--config.data.examples_per_shard=8",
    "--config.data.ldct.num_angles=30",
    f"--workdir={workdir}",
    *args,
  ]
  return subprocess.run(
    [sys.executable, "-m", "launch.engine", *flags_],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_unattended_run_then_a_corrupt_state(tmp_path, data_dir, subprocess_env):
  workdir = tmp_path / "run"
  result = _engine(
    subprocess_env(),
    data_dir,
    workdir,
    "--config.review.auto_decision=accept",
    "--config.max_iterations=1",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "stopped: max_iterations=1 reached" in result.stdout
  with open(workdir / "stats.csv", newline="") as handle:
    rows = list(csv.DictReader(handle))
  stats = json.loads((workdir / "stats.json").read_text())
  assert len(rows) == len(stats) == 1
  row = stats[0]
  assert row["review_rate"] == 1.0 and row["accept_rate"] == 1.0
  assert row["decisions_source"] == "auto:accept"
  assert 0 < row["selected"] <= 40 and row["samples"] >= row["selected"]
  assert 0 < row["accumulated"] <= row["samples"]
  printed = result.stdout.splitlines()
  header = printed.index(next(line for line in printed if line.startswith("iteration ")))
  assert printed[header + 1].split()[0] == "0"
  state = json.loads((workdir / "state.json").read_text())
  assert state["phase"] == "finetune" and state["pool"]["size"] > 0
  (workdir / "state.json").write_text('{"schema": "medq-engine-state", "version": 1')
  broken = _engine(subprocess_env(), data_dir, workdir, "--config.review.auto_decision=accept")
  assert broken.returncode == 1 and "Traceback" not in broken.stderr
  fatal = [line for line in broken.stderr.splitlines() if line.startswith("FATAL")]
  assert len(fatal) == 1 and fatal[0].startswith(
    f"FATAL medq-engine: {workdir}/state.json: not a valid JSON state file"
  )
