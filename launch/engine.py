r"""medq-engine: the MedQ-Engine closed loop on the built-in data (docs/engine.md, "The loop").

  medq-engine --config=configs/engine.py:runlocal --config.review.auto_decision=accept \
      --workdir=runs/engine

Runs (or resumes: rerun the same command) evaluate -> cluster -> retrieve -> sample -> annotate
-> review -> dedup -> accumulate -> fine-tune until dev accuracy plateaus. Without
auto_decision it stops at each review queue and says which file to fill in. Prints the
per-iteration statistics and writes them to <workdir>/stats.json and stats.csv.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags

from launch import cli
from launch.engine_build import build_engine

_CONFIG = cli.define_config_file("config", "configs/engine.py", "Config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Loop directory (default: config.workdir).")


def _print_stats(rows) -> None:
  from medq_jax.engine import loop

  keys = [k for k in loop.STATS_FIELDS if k != "decisions_source"]
  print(" ".join(keys))
  for row in rows:
    print(
      " ".join(
        "-" if row[k] is None else (f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]))
        for k in keys
      )
    )


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.getLogger().setLevel(logging.INFO)
  config = _CONFIG.value
  workdir = _WORKDIR.value or config.workdir
  from data_pipeline.chat_client import ChatError
  from medq_jax.train.loop import STOP_ERRORS

  try:
    engine = build_engine(config, workdir)
    state = engine.run()
  except (ValueError, OSError, ChatError, *STOP_ERRORS) as error:  # one line; state untouched
    sys.stderr.write(f"FATAL medq-engine: {error}\n")
    sys.exit(1)
  _print_stats(engine.statistics(state))
  if engine.halted:
    sys.stderr.write(f"FATAL medq-engine: {engine.halted}\n")
    sys.exit(1)
  if engine.waiting:
    print(f"waiting for review: {engine.waiting}")
  elif state.stopped:
    print(f"stopped: {state.stopped}")
  print(f"state: {os.path.join(workdir, 'state.json')}")


def run_main() -> None:
  cli.run(main)


if __name__ == "__main__":
  run_main()
