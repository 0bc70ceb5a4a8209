"""The cluster launch scripts (launch/cluster/): the local launcher runs two medq-train processes
on 127.0.0.1 that finish and agree; a failing process stops the others; the SLURM and TPU-pod
scripts name a missing variable and pass medq-train the flags JAX's cluster detection needs."""

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL = os.path.join(ROOT, "launch", "cluster", "local.sh")
SLURM = os.path.join(ROOT, "launch", "cluster", "slurm_gpu.sbatch")
TPU = os.path.join(ROOT, "launch", "cluster", "tpu_pod.sh")
PYTHON = sys.executable


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  """A small BPE tokenizer made here (training one from the dataset costs ~20 s per run)."""
  from medq_jax import tokenizer as tokenizer_lib

  out = str(tmp_path_factory.mktemp("tokenizer"))
  texts = ["Denoise this MRI slice.", "The image shows mild noise and blur; contrast is fair."]
  tokenizer_lib.train_bpe_tokenizer(texts * 20, 512, out)
  return out


def _final_metrics(log: str) -> dict[str, float]:
  lines = [line for line in log.splitlines() if line.startswith("final: ")]
  assert len(lines) == 1, log[-2000:]
  return {k: float(v) for k, v in re.findall(r"(\w+)=(\S+)", lines[0])}


def _launch_local_train(workdir, data_dir, logs, tokenizer_dir, steps, env):
  """launch/cluster/local.sh: two medq-train processes (2 CPU devices each) of a tiny stage-1
  run saving every 2 steps; returns (returncode, stderr, [process 0 log, process 1 log])."""
  command = [
    LOCAL,
    "2",
    "2",
    PYTHON,
    "-u",
    "-m",
    "launch.train",
    "--config=configs/medq_uni.py:size=tiny,stage=1",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    "--config.data.max_slices_per_volume=2",
    "--config.data.ldct.num_angles=30",
    "--config.data.num_workers=0",
    f"--config.layout.tokenizer_dir={tokenizer_dir}",
    f"--config.train.steps={steps}",
    "--config.train.checkpoint_every=2",
    "--config.train.tensorboard=False",
    "--config.init.flux_ae=builtin",
  ]
  result = subprocess.run(
    command,
    cwd=ROOT,
    env=env(MEDQ_LOG_DIR=str(logs)),
    capture_output=True,
    text=True,
    timeout=600,
  )
  outputs = [(logs / f"process_{i}.log").read_text() for i in range(2)]
  assert result.returncode == 0, result.stderr + outputs[0][-3000:] + outputs[1][-3000:]
  assert "all 2 processes finished" in result.stdout
  return outputs


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tokenizer_dir, subprocess_env):
  """A 4-step two-process run (checkpoints at steps 2 and 4) and the processes' logs."""
  root = tmp_path_factory.mktemp("two_process")
  outputs = _launch_local_train(
    root / "run", root / "data", root / "logs", tokenizer_dir, 4, subprocess_env
  )
  return root, outputs


def test_local_two_processes_train_and_agree(two_process_run):
  root, outputs = two_process_run
  workdir = root / "run"
  # Both processes ran the same 4 steps on one 4-device mesh (2 processes x 2 devices) and
  # report the same global loss; process 0 alone wrote the metrics and the checkpoint.
  assert all("mesh {'data': 1, 'fsdp': 4, 'tensor': 1}" in out for out in outputs)
  finals = [_final_metrics(out) for out in outputs]
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [row["step"] for row in rows] == [1, 2, 3, 4]
  for key in ("loss", "loss_rf", "loss_l1", "grad_norm"):
    assert finals[0][key] == finals[1][key], key
    assert finals[0][key] == pytest.approx(rows[-1][key], rel=1e-3), key
  assert finals[0]["step"] == finals[1]["step"] == 4
  assert os.path.isdir(workdir / "checkpoints" / "4")


def test_local_processes_fall_back_together(
  two_process_run, tmp_path, tokenizer_dir, subprocess_env
):
  """A data file of the latest step that only process 1 reads (its own FSDP shards) is
  truncated, and its Grain iterator position deleted. Before, process 1 alone raised inside Orbax's restore while process 0 went on to
  verify step 4: the two then met in each other's barriers and collectives on different steps,
  and every good step was reported corrupt. Now both report process 1's file, set step 4 aside
  together and resume from step 2, reproducing the first run's steps 3 and 4 exactly."""
  root, _ = two_process_run
  workdir = tmp_path / "run"
  shutil.copytree(root / "run", workdir)
  process_1_data = workdir / "checkpoints" / "4" / "state" / "ocdbt.process_1" / "d"
  largest = max(process_1_data.iterdir(), key=lambda f: f.stat().st_size)
  os.truncate(largest, 100)
  (workdir / "checkpoints" / "4" / "data" / "process_1-of-2.json").unlink()
  outputs = _launch_local_train(
    workdir, root / "data", tmp_path / "logs", tokenizer_dir, 6, subprocess_env
  )
  for out in outputs:
    assert "step 4 in " in out and "does not restore (process 1: " in out, out[-3000:]
    assert "process_1-of-2.json does not exist" in out and "OUT_OF_RANGE" in out
    assert "process 0: " not in out  # the damaged file is process 1's alone
    assert "resumed from step 2" in out
    assert "no usable checkpoint" not in out
    assert _final_metrics(out)["step"] == 6
  assert os.path.isdir(workdir / "corrupt_checkpoints" / "4")
  first = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
  again = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [row["step"] for row in again] == [1, 2, 3, 4, 5, 6]
  for before, after in zip(first[2:4], again[2:4], strict=True):
    for key in ("loss", "loss_rf", "loss_l1", "grad_norm"):
      assert after[key] == before[key], (before["step"], key)


def test_local_failure_stops_the_others(tmp_path, subprocess_env):
  # Process 1 fails at once; process 0 would sleep 60 s: the launcher stops it and reports 1.
  script = 'case "$3" in --process_id=1) echo broken input >&2; exit 3;; *) sleep 60;; esac'
  start = time.monotonic()
  result = subprocess.run(
    [LOCAL, "2", "0", "bash", "-c", script, "worker"],
    env=subprocess_env(MEDQ_LOG_DIR=str(tmp_path)),
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert result.returncode == 3
  assert time.monotonic() - start < 20
  assert "process 1 exited with status 3" in result.stderr
  assert "broken input" in result.stderr


def test_local_passes_each_process_its_flags(tmp_path, subprocess_env):
  result = subprocess.run(
    [LOCAL, "3", "4", "bash", "-c", 'echo "$@"', "worker"],
    env=subprocess_env(MEDQ_LOG_DIR=str(tmp_path), MEDQ_PORT="23456"),
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert result.returncode == 0, result.stderr
  for i in range(3):
    assert (tmp_path / f"process_{i}.log").read_text().split() == [
      "--coordinator=127.0.0.1:23456",
      "--num_processes=3",
      f"--process_id={i}",
      "--local_devices=4",
    ]


@pytest.mark.parametrize("args", [["0", "1", "true"], ["two", "1", "true"], ["2", "x", "true"]])
def test_local_usage_errors(args, subprocess_env):
  result = subprocess.run(
    [LOCAL, *args], env=subprocess_env(), capture_output=True, text=True, timeout=30
  )
  assert result.returncode == 2
  assert "must be" in result.stderr and result.stdout == ""


def _fake_srun(tmp_path):
  """An `srun` that records its arguments and working directory instead of starting tasks."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  srun = bin_dir / "srun"
  srun.write_text('#!/usr/bin/env bash\necho "cwd=$PWD"\nprintf "%s\\n" "$@"\n')
  srun.chmod(srun.stat().st_mode | stat.S_IXUSR)
  return str(bin_dir)


def test_slurm_script_runs_train_distributed(tmp_path, subprocess_env):
  env = subprocess_env(
    PATH=_fake_srun(tmp_path) + os.pathsep + os.environ["PATH"],
    SLURM_JOB_ID="77",
    SLURM_NTASKS="16",
    MEDQ_REPO=ROOT,
    MEDQ_WORKDIR="/shared/runs/a b",
    MEDQ_CONFIG="configs/unimedvl_7b_stage1.py:mesh=2x8x1,batch=16",
  )
  result = subprocess.run(
    ["bash", SLURM, "--config.train.steps=5"], env=env, capture_output=True, text=True, timeout=30
  )
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert f"cwd={ROOT}" in lines
  start = lines.index("--kill-on-bad-exit=1")
  assert lines[start + 1 :] == [
    os.path.join(ROOT, ".venv", "bin", "python"),
    "-u",
    "-m",
    "launch.train",
    "--config=configs/unimedvl_7b_stage1.py:mesh=2x8x1,batch=16",
    "--workdir=/shared/runs/a b",
    "--distributed",
    "--config.train.steps=5",
  ]


@pytest.mark.parametrize("missing", ["SLURM_JOB_ID", "MEDQ_REPO", "MEDQ_WORKDIR"])
def test_slurm_script_names_a_missing_variable(tmp_path, missing, subprocess_env):
  env = subprocess_env(
    SLURM_JOB_ID="77", SLURM_NTASKS="8", MEDQ_REPO=ROOT, MEDQ_WORKDIR=str(tmp_path)
  )
  env.pop(missing)
  result = subprocess.run(["bash", SLURM], env=env, capture_output=True, text=True, timeout=30)
  assert result.returncode == 1
  assert f"{missing} is not set" in result.stderr


def test_tpu_script_command_and_missing_variable(subprocess_env):
  env = subprocess_env(
    TPU_NAME="pod",
    TPU_ZONE="us-east5-a",
    MEDQ_REMOTE_REPO="~/medq-jax",
    MEDQ_WORKDIR="/mnt/runs/x",
    MEDQ_DRY_RUN="1",
  )
  result = subprocess.run(
    [TPU, "--config.init.qwen2=/ckpt/my model"], env=env, capture_output=True, text=True
  )
  assert result.returncode == 0, result.stderr
  # The printed command is shell-quoted: split as a shell would.
  parsed = shlex.split(result.stdout)
  assert parsed[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod", "--zone=us-east5-a"]
  assert "--worker=all" in parsed
  remote = next(a for a in parsed if a.startswith("--command=")).removeprefix("--command=")
  assert remote.startswith("cd ~/medq-jax && .venv/bin/python -u -m launch.train ")
  remote_argv = shlex.split(remote.split(" && ", 1)[1])
  assert remote_argv[4:] == [
    "--config=configs/unimedvl_7b_stage1.py:mesh=1x-1x1",
    "--workdir=/mnt/runs/x",
    "--distributed",
    "--config.init.qwen2=/ckpt/my model",
  ]
  env.pop("TPU_ZONE")
  result = subprocess.run([TPU], env=env, capture_output=True, text=True)
  assert result.returncode == 1 and "TPU_ZONE is not set" in result.stderr
