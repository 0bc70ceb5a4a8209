"""The benchmarks' timing: `interleaved_medians` calls its programs round-robin (so a ratio of two
is measured under the same drifting load), and `launch.bench_routing`, which uses it, prints the
three variants and ratios that are its own table's times."""

import os
import re
import subprocess
import sys
import time

from medq_jax.train import timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_interleaved_medians_run_round_robin_after_the_warmup():
  calls = []
  record = lambda name, seconds: lambda: (calls.append(name), time.sleep(seconds))[0]
  medians = timing.interleaved_medians(
    {"a": record("a", 0.0), "b": record("b", 0.02)}, iters=3, warmup=2
  )
  assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
  assert set(medians) == {"a", "b"} and medians["b"] >= 0.02 > medians["a"]
  assert timing.median_seconds(lambda x: x + 1, 1, warmup=0, iters=1) >= 0.0


def test_bench_routing_prints_its_own_ratios(subprocess_env):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.bench_routing",
      "--config=configs/medq_uni.py:size=tiny",
      "--batch=1",
      "--und_len=24",
      "--gen_len=8",
      "--iters=2",
    ],
    cwd=ROOT,
    env=subprocess_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  rows = {
    line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
    for line in result.stdout.splitlines()
    if line.startswith(("| dense", "| MoT"))
  }
  assert list(rows) == ["dense (one expert)", "MoT scope=ffn", "MoT scope=all"]
  assert rows["dense (one expert)"][:2] == ["32", "0"] and rows["MoT scope=ffn"][:2] == ["24", "8"]
  dense_ms = float(rows["dense (one expert)"][3])
  ratios = {scope: float(rows[f"MoT scope={scope}"][3]) / dense_ms for scope in ("ffn", "all")}
  last = result.stdout.strip().splitlines()[-1]
  printed = re.fullmatch(r"routing overhead: ffn ([\d.]+)x, all ([\d.]+)x \(target <= 1.05\)", last)
  assert printed, last
  for scope, value in zip(("ffn", "all"), printed.groups()):
    assert abs(float(value) - ratios[scope]) < 0.01 * ratios[scope] + 0.002, (scope, value)
