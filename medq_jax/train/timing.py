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
  return interleaved_medians({"fn": lambda: fn(*args)}, iters, warmup)["fn"]


def interleaved_medians(
  fns: dict[str, Callable[[], Any]], iters: int = 10, warmup: int = 2
) -> dict[str, float]:
  """Median seconds of each zero-argument callable (results blocked on), timed round-robin, one
  call of each per round after `warmup` calls of each: load from other processes then drifts
  over all of them alike, so their ratios hold on a shared host where back-to-back medians do
  not (a sequential routing benchmark once printed 0.75x for equal work)."""
  for fn in fns.values():
    for _ in range(warmup):
      jax.block_until_ready(fn())
  times = {name: [] for name in fns}
  for _ in range(iters):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(values) for name, values in times.items()}


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
  """Prints a Markdown table."""
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  print("| " + " | ".join(headers) + " |")
  print("|" + "|".join("---" for _ in headers) + "|")
  for row in rows:
    print("| " + " | ".join(fmt(v) for v in row) + " |")
