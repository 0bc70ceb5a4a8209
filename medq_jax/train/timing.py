"""Timing helpers for benchmarks: compile separately, then median wall time of blocked calls."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


def compile_seconds(jitted: Callable, *args) -> tuple[Any, float]:
  """AOT-compiles `jitted` for `args`; returns (compiled, seconds spent lowering + compiling)."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def median_seconds(fn: Callable, *args, warmup: int = 2, iters: int = 10) -> float:
  """Median wall time of `fn(*args)` with results blocked on, after `warmup` calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
  """Prints a Markdown table."""
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  print("| " + " | ".join(headers) + " |")
  print("|" + "|".join("---" for _ in headers) + "|")
  for row in rows:
    print("| " + " | ".join(fmt(v) for v in row) + " |")
