"""A MedQ-Engine run SIGKILLed after chosen phases (in a subprocess, through the loop's
MEDQ_ENGINE_KILL_AFTER hook) and rerun ends in the state of an uninterrupted run, with no oracle
question asked twice and no decision lost."""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest's importlib mode

from test_engine_loop import REPO, _oracle_log, make_engine, resume_config

from medq_jax.engine import loop, loop_state

SCRIPT = os.path.join(REPO, "tests", "engine", "test_engine_loop.py")


def _run_script(env, workdir, kill_after=None):
  env = dict(env, PYTHONPATH=REPO)
  env.pop(loop.KILL_ENV, None)
  if kill_after:
    env[loop.KILL_ENV] = kill_after
  return subprocess.run(
    [sys.executable, SCRIPT, str(workdir)],
    env=env,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, subprocess_env):
  whole = tmp_path / "whole"
  make_engine(whole, resume_config()).run()
  killed = tmp_path / "killed"
  # Mid-iteration 0 after the evaluation, after the oracle's answers, and mid-iteration 1.
  for kill_after in ("0:evaluate", "0:annotate", "1:retrieve"):
    result = _run_script(subprocess_env(), killed, kill_after)
    assert result.returncode == -9, (kill_after, result.stderr[-2000:])
    state = loop_state.load(str(killed / "state.json"))
    iteration, phase = kill_after.split(":")
    assert (state.iteration, state.phase) == (int(iteration), phase)
  final = _run_script(subprocess_env(), killed)
  assert final.returncode == 0, final.stderr[-2000:]
  a = json.loads((whole / "state.json").read_text())
  b = json.loads((killed / "state.json").read_text())
  assert b["stopped"].startswith("max_iterations") and len(b["records"]) == 2
  assert all(r["review"]["decisions"] for r in b["records"])
  assert a == b
  log = _oracle_log(killed)
  assert len(log) == len(set(log)) and sorted(log) == sorted(_oracle_log(whole))
  assert (whole / "stats.csv").read_text() == (killed / "stats.csv").read_text()
