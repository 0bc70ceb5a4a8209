"""Two JAX processes start `medq-train` on a fresh workdir: process 0 precomputes the dataset and
trains the tokenizer while process 1 waits at the barrier, then both build the same sharded
model. (With `train.steps=0` the run stops after set-up, so the test costs no training.)"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_process_one_waits_for_data_and_tokenizer(free_port, tmp_path, subprocess_env):
  port = free_port
  env = subprocess_env()
  overrides = [
    "--config=configs/medq_uni.py:size=tiny,stage=2,mesh=1x-1x1",
    f"--config.data.data_dir={tmp_path / 'data'}",
    "--config.data.max_slices_per_volume=2",
    "--config.data.ldct.num_angles=30",
    "--config.data.num_workers=0",
    "--config.train.steps=0",
    f"--workdir={tmp_path / 'run'}",
  ]
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "launch.train",
        *overrides,
        f"--process_id={i}",
        "--num_processes=2",
        f"--coordinator=127.0.0.1:{port}",
        "--local_devices=2",
      ],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outputs = []
  for proc in procs:
    output, _ = proc.communicate(timeout=900)
    outputs.append(output)
    assert proc.returncode == 0, output[-3000:]
  # Only process 0 prepared; process 1 found both ready after the barrier.
  assert "running the precompute" in outputs[0] and "running the precompute" not in outputs[1]
  assert "BPE tokenizer" in outputs[0] and "BPE tokenizer" not in outputs[1]
  assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").exists()
  for output in outputs:
    assert "nothing to do" in output
