"""Two JAX processes on 127.0.0.1 (4 CPU devices each) run one sharded train step on a global
(2, 2, 2) mesh, each feeding half the batch; the result equals one process with 8 devices."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(env, args, **kwargs):
  return subprocess.Popen(
    [sys.executable, "-m", "launch.multihost_check", *args],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    **kwargs,
  )


def test_two_processes_match_one(free_port, tmp_path, subprocess_env):
  port = free_port
  config = "--config=configs/medq_uni.py:size=tiny,stage=2,mesh=2x2x2"
  common = [config, f"--coordinator=127.0.0.1:{port}", "--num_processes=2", "--local_devices=4"]
  workers = [
    _run(subprocess_env(), [*common, f"--process_id={i}", f"--out={tmp_path / 'multi.json'}"])
    for i in range(2)
  ]
  single = _run(
    subprocess_env(), [config, "--local_devices=8", f"--out={tmp_path / 'single.json'}"]
  )
  for proc in workers + [single]:
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
  multi = json.loads((tmp_path / "multi.json").read_text())
  reference = json.loads((tmp_path / "single.json").read_text())
  assert multi["process_count"] == 2 and reference["process_count"] == 1
  assert multi["device_count"] == reference["device_count"] == 8
  for key in ("loss", "loss_rf", "loss_ce", "loss_l1", "grad_norm", "param_checksum"):
    assert abs(multi[key] - reference[key]) <= 1e-4 * max(1.0, abs(reference[key])), key
  assert reference["loss_ce"] > 0 and reference["loss_rf"] > 0
