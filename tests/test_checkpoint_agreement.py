"""Two JAX processes on 127.0.0.1 agree on a run's checkpoint steps before any of them resumes:
a workdir each host sees differently (its own disk instead of one shared filesystem) is one error
on every process, naming each process's steps, instead of one process resuming while the other
starts afresh. A step that one host cannot read before any item is read (its copy lacks an item)
is one error on every process too, and they fall back to the previous step together."""

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from medq_jax import checkpoints
from medq_jax.train import checkpoint as checkpoint_lib

# Each process: join the two-process cluster, ask whether the checkpoint directory given for it
# has steps (`checkpoints.has_steps`, what the trainer asks to decide whether it resumes), print
# the answer or the error.
CHILD = """
import sys
import jax
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
from medq_jax import checkpoints
try:
  print("steps", checkpoints.agreed_steps(sys.argv[3]), checkpoints.has_steps(sys.argv[3]))
except checkpoints.CheckpointError as error:
  print("error", error)
"""


def _save_steps(workdir, steps):
  manager = checkpoint_lib.make_manager(checkpoints.checkpoint_dir(str(workdir)), save_every=1)
  for step in steps:
    manager.save(
      step,
      args=checkpoint_lib.ocp.args.Composite(
        state=checkpoint_lib.ocp.args.StandardSave({"w": jnp.full((4,), float(step))})
      ),
    )
  manager.wait_until_finished()
  manager.close()
  return checkpoints.checkpoint_dir(str(workdir))


def _ask_both(free_port, directories, subprocess_env, child=CHILD, lines=1):
  """Runs `child` as process i of two on directories[i]; each one's last `lines` output lines."""
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", child, f"127.0.0.1:{free_port}", str(i), str(directory)],
      env=subprocess_env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i, directory in enumerate(directories)
  ]
  outputs = []
  for proc in procs:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    tail = out.strip().splitlines()[-lines:]
    outputs.append(tail[0] if lines == 1 else tail)
  return outputs


@pytest.mark.parametrize("second", ["fewer", "missing"])
def test_processes_that_see_different_steps_stop_alike(second, tmp_path, free_port, subprocess_env):
  first = _save_steps(tmp_path / "host0", [1, 2])
  other = (
    _save_steps(tmp_path / "host1", [1])
    if second == "fewer"
    else checkpoints.checkpoint_dir(str(tmp_path / "host1"))  # a fresh host: nothing there
  )
  seen = "1" if second == "fewer" else ""
  for output in _ask_both(free_port, [first, other], subprocess_env):
    assert output.startswith("error "), output
    assert "the processes see different checkpoint steps" in output
    assert f"process 0: [2,1]; process 1: [{seen}]" in output
    assert "shared by every host" in output


def test_processes_that_see_the_same_steps_agree(tmp_path, free_port, subprocess_env):
  shared = _save_steps(tmp_path / "shared", [3, 5])
  assert _ask_both(free_port, [shared, shared], subprocess_env) == ["steps [5, 3] True"] * 2


# Each process: resume as the trainer does (newest agreed step first, the previous one when a
# step does not restore), printing each step's error and then what it restored.
RESUME_CHILD = """
import sys
import jax
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
import jax.numpy as jnp
from medq_jax import checkpoints
from medq_jax.train import checkpoint as checkpoint_lib
ocp = checkpoint_lib.ocp
manager = checkpoint_lib.make_manager(sys.argv[3], save_every=1)
device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
target = {"w": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=device)}
for step in checkpoints.agreed_steps(sys.argv[3]):
  try:
    restored = checkpoints.restore_agreed(
      manager, step, ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  except checkpoints.CheckpointError as error:
    print("error", error)
    continue
  print("restored", step, [float(x) for x in restored.state["w"]])
  break
"""


def test_an_item_missing_on_one_host_falls_back_together(tmp_path, free_port, subprocess_env):
  """Same steps listed on both hosts, but host 1's copy of step 2 lacks its state item: Orbax
  raised that before reading anything, on process 1 only, and process 0 waited in the restore's
  closing barrier until killed. Now both report it and resume from step 1 together."""
  first = _save_steps(tmp_path / "host0", [1, 2])
  other = checkpoints.checkpoint_dir(str(tmp_path / "host1"))
  shutil.copytree(first, other)
  shutil.rmtree(os.path.join(other, "2", "state"))
  for lines in _ask_both(free_port, [first, other], subprocess_env, RESUME_CHILD, lines=2):
    assert lines[0].startswith("error step 2 in "), lines
    assert f"(process 1: {other}/2: no state item)" in lines[0]
    assert lines[1] == "restored 1 [1.0, 1.0, 1.0, 1.0]"


def test_missing_item_is_named_on_one_process(tmp_path):
  directory = _save_steps(tmp_path, [1])
  shutil.rmtree(os.path.join(directory, "1", "state"))
  manager = checkpoint_lib.make_manager(directory, save_every=1)
  target = {"w": jax.ShapeDtypeStruct((4,), jnp.float32)}
  with pytest.raises(checkpoints.CheckpointError, match=r"/1: no state item\)$"):
    checkpoints.restore_agreed(
      manager,
      1,
      checkpoint_lib.ocp.args.Composite(state=checkpoint_lib.ocp.args.StandardRestore(target)),
    )
  manager.close()
