"""launch/bench_inference.py at the tiny size: every measurement runs, the uncached decoding
reference gives the engine's tokens, and the last two lines are the two speedups."""

import re

import numpy as np
import pytest

from configs import medq_uni
from launch import bench_inference


def test_benchmark_smoke_run(capsys):
  config = medq_uni.get_config("size=tiny,stage=2")
  result = bench_inference.benchmark(config, "float32", batch=2, new_tokens=6, steps=3, repeats=1)
  assert result["lengths"] == [6, 6] and result["truncated"] == 2  # never stopped early
  assert result["rows_parted_at_near_tie"] == 0  # float32 on CPU: the very same tokens
  assert result["restore_max_abs_diff"] < 1e-4  # prefix cache = recomputation
  for key in ("decode_cached_s", "decode_uncached_s", "restore_cached_s", "restore_uncached_s"):
    assert result[key] > 0
  bench_inference.report(result)
  lines = capsys.readouterr().out.strip().splitlines()
  assert re.fullmatch(r"decode_cached_speedup=\d+\.\d\d", lines[-2])
  assert re.fullmatch(r"restore_prefix_cache_speedup=\d+\.\d\d", lines[-1])
  assert any("images/s" in line for line in lines)


def test_token_check_accepts_only_near_ties():
  recomputed = np.array([[5, 6, 7, 8], [5, 6, 7, 8]])
  gaps = np.array([[1.0, 1.0, 1e-5, 1.0], [1.0, 1.0, 0.5, 1.0]])
  same = [[5, 6, 7, 8], [5, 6, 7, 8]]
  assert bench_inference.check_same_tokens(same, recomputed, gaps, 2, 1e-3) == 0
  assert (
    bench_inference.check_same_tokens([[5, 6, 9, 9], [5, 6, 7, 8]], recomputed, gaps, 2, 1e-3) == 1
  )
  with pytest.raises(AssertionError, match="row 1: .* part at step 2"):
    bench_inference.check_same_tokens([[5, 6, 7, 8], [5, 6, 9, 9]], recomputed, gaps, 2, 1e-3)
  # the recomputed greedy stops where it picks the stop token
  assert bench_inference.check_same_tokens([[5]], np.array([[5, 2, 7, 8]]), gaps[:1], 2, 1e-3) == 0
