"""The cluster launch scripts (launch/cluster/): the local launcher runs two medq-train processes
on 127.0.0.1 that finish and agree; a failing process stops the others; the SLURM and TPU-pod
scripts name a missing variable and pass medq-train the flags JAX's cluster detection needs."""

import json
import os
import re
import shlex
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


def test_local_two_processes_train_and_agree(tmp_path, tokenizer_dir, subprocess_env):
  workdir, logs = tmp_path / "run", tmp_path / "logs"
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
    f"--config.data.data_dir={tmp_path / 'data'}",
    "--config.data.max_slices_per_volume=2",
    "--config.data.ldct.num_angles=30",
    "--config.data.num_workers=0",
    f"--config.layout.tokenizer_dir={tokenizer_dir}",
    "--config.train.steps=3",
    "--config.train.checkpoint_every=3",
    "--config.train.tensorboard=False",
    "--config.init.flux_ae=builtin",
  ]
  result = subprocess.run(
    command,
    cwd=ROOT,
    env=subprocess_env(MEDQ_LOG_DIR=str(logs)),
    capture_output=True,
    text=True,
    timeout=600,
  )
  outputs = [(logs / f"process_{i}.log").read_text() for i in range(2)]
  assert result.returncode == 0, result.stderr + outputs[0][-3000:] + outputs[1][-3000:]
  assert "all 2 processes finished" in result.stdout
  # Both processes ran the same 3 steps on one 4-device mesh (2 processes x 2 devices) and
  # report the same global loss; process 0 alone wrote the metrics and the checkpoint.
  assert all("mesh {'data': 1, 'fsdp': 4, 'tensor': 1}" in out for out in outputs)
  finals = [_final_metrics(out) for out in outputs]
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [row["step"] for row in rows] == [1, 2, 3]
  for key in ("loss", "loss_rf", "loss_l1", "grad_norm"):
    assert finals[0][key] == finals[1][key], key
    assert finals[0][key] == pytest.approx(rows[-1][key], rel=1e-3), key
  assert finals[0]["step"] == finals[1]["step"] == 3
  assert os.path.isdir(workdir / "checkpoints" / "3")


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
