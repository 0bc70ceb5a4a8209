"""medq_jax.checkpoints: a training checkpoint's parameters restore alone (no optimizer state is
built or read) onto any mesh, in fp32 or bf16, equal to what was saved; a checkpoint of another
model size is one clear error naming the parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from configs import medq_uni
from medq_jax import checkpoints
from medq_jax import sharding as sharding_lib
from medq_jax.train import checkpoint as checkpoint_lib
from medq_jax.train import state as state_lib


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
  """A tiny run's workdir with one checkpoint (params + AdamW state) at step 7."""
  config = medq_uni.get_config("size=tiny,stage=2,mesh=1x-1x1")
  setup = state_lib.build_setup(config, jax.random.key(3))
  state = state_lib.create_train_state(setup.params, setup.optimizer)
  # Make the optimizer state non-trivial, so a restore that mixed it up could not pass.
  state = state.replace(
    step=jnp.asarray(7, jnp.int32),
    opt_state=jax.tree_util.tree_map(
      lambda x: x + 1 if jnp.issubdtype(x.dtype, jnp.floating) else x, state.opt_state
    ),
  )
  workdir = tmp_path_factory.mktemp("run")
  manager = checkpoint_lib.make_manager(checkpoints.checkpoint_dir(str(workdir)))
  manager.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)
  manager.wait_until_finished()
  manager.close()
  return config, str(workdir), jax.device_get(setup.params)


def _assert_equal_trees(actual, expected, **tol):
  flat_a = jax.tree_util.tree_flatten_with_path(actual)[0]
  flat_e = jax.tree_util.tree_flatten_with_path(expected)[0]
  assert [p for p, _ in flat_a] == [p for p, _ in flat_e]
  for (path, a), (_, e) in zip(flat_a, flat_e):
    np.testing.assert_allclose(
      np.asarray(a, np.float32),
      np.asarray(e, np.float32),
      **tol,
      err_msg=jax.tree_util.keystr(path),
    )


def test_restores_params_alone_on_one_device(saved_run, monkeypatch):
  config, workdir, saved = saved_run
  # No optimizer may be built for evaluation.
  monkeypatch.setattr(optax, "adamw", lambda *a, **k: pytest.fail("optimizer built"))
  params, step = checkpoints.restore_params(workdir, config.model)
  assert step == 7
  _assert_equal_trees(params, saved, rtol=0, atol=0)


@pytest.mark.parametrize("mesh_shape", [(1, 4, 2), (2, 2, 1), (1, 1, 1)])
def test_restores_onto_another_mesh_in_bf16(saved_run, mesh_shape):
  config, workdir, saved = saved_run
  devices = jax.devices()[: int(np.prod(mesh_shape))]
  mesh_config = config.mesh.copy_and_resolve_references()
  mesh_config.shape = mesh_shape
  mesh = sharding_lib.make_mesh(mesh_config, devices)
  params, _ = checkpoints.restore_params(
    workdir, config.model, mesh=mesh, rules=config.sharding_rules, dtype="bfloat16"
  )
  kernel = params["decoder"]["layers"]["mlp"]["up_proj"]["kernel"]
  assert kernel.dtype == jnp.bfloat16
  assert kernel.sharding.mesh.shape == dict(zip(("data", "fsdp", "tensor"), mesh_shape))
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  expected = jax.tree_util.tree_map(lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16)), saved)
  _assert_equal_trees(params, expected, rtol=0, atol=0)


def test_other_model_size_is_one_clear_error(saved_run):
  _, workdir, _ = saved_run
  small = medq_uni.get_config("size=small,stage=2")
  with pytest.raises(
    checkpoints.CheckpointError,
    match=r"does not fit config.model .*"
    r"connector/fc1/bias: checkpoint \(64,\) vs config \(256,\)",
  ):
    checkpoints.restore_params(workdir, small.model)
  scope_all = medq_uni.get_config("size=tiny,stage=2,scope=all")
  with pytest.raises(checkpoints.CheckpointError, match="missing .*_moe_gen"):
    checkpoints.restore_params(workdir, scope_all.model)


def test_missing_workdir_and_step_are_named(saved_run, tmp_path):
  config, workdir, _ = saved_run
  with pytest.raises(checkpoints.CheckpointError, match="no such checkpoint directory"):
    checkpoints.restore_params(str(tmp_path / "nothing"), config.model)
  (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
  with pytest.raises(checkpoints.CheckpointError, match="no checkpoint steps"):
    checkpoints.restore_params(str(tmp_path / "empty"), config.model)
  with pytest.raises(checkpoints.CheckpointError, match=r"no step 3; steps: \[7\]"):
    checkpoints.restore_params(workdir, config.model, step=3)


def _array_files(step_dir):
  import os

  return sorted(
    (os.path.join(root, name) for root, _, names in os.walk(step_dir) for name in names),
    key=os.path.getsize,
  )


def _flip_bit(path):
  import pathlib

  data = bytearray(pathlib.Path(path).read_bytes())
  data[len(data) // 2] ^= 0x04
  pathlib.Path(path).write_bytes(bytes(data))


def _truncate(path):
  import os

  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size // 2)


def _delete(path):
  import os

  os.remove(path)


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory, placed_params):
  """A workdir with good steps 5 and 9 (different params) and their checksums."""
  config = medq_uni.get_config("size=tiny,stage=2,mesh=1x-1x1")
  saved = {}
  workdir = str(tmp_path_factory.mktemp("two_steps"))
  manager = checkpoint_lib.make_manager(checkpoints.checkpoint_dir(workdir))
  for step, seed in ((5, 1), (9, 2)):
    params, _ = placed_params(config, seed)
    state = state_lib.TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state={})
    checkpoints.write_checksums(str(manager.directory), step, state)
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)
    manager.wait_until_finished()
    saved[step] = jax.device_get(params)
  manager.close()
  return config, workdir, saved


@pytest.mark.parametrize("damage", [_flip_bit, _truncate, _delete])
def test_corrupt_latest_step_is_reported_and_the_previous_one_restored(
  two_steps, tmp_path, damage, caplog, unraisable_reports
):
  import logging
  import os
  import shutil

  config, workdir, saved = two_steps
  run = str(tmp_path / "run")
  shutil.copytree(workdir, run)
  step_dir = os.path.join(checkpoints.checkpoint_dir(run), "9")
  damage(_array_files(os.path.join(step_dir, "state"))[-1])  # the largest array file
  with caplog.at_level(logging.WARNING):
    params, step = checkpoints.restore_params(run, config.model)
  assert step == 5
  _assert_equal_trees(params, saved[5], rtol=0, atol=0)
  (warning,) = [r.getMessage() for r in caplog.records if "trying the previous" in r.getMessage()]
  assert "step 9" in warning
  with pytest.raises(checkpoints.CheckpointError, match="step 9"):
    checkpoints.restore_params(run, config.model, step=9)  # an explicit step must be good
  # The failed restore's leftover reads (pages of traceback each) stay out of the terminal.
  assert unraisable_reports.settle() == []


def test_abandoned_reads_are_absorbed_and_other_reports_pass_on(monkeypatch):
  """The filter keeps only a failed restore's leftovers quiet: an Orbax coroutine collected
  unfinished, and TensorStore's late `call_soon_threadsafe` into the closed loop; anything else
  (another coroutine, the same message from `call_soon`, another error) reaches the previous
  hook."""
  import asyncio
  import sys
  import types

  from orbax.checkpoint._src.serialization import serialization

  def raised(call):
    try:
      call()
    except Exception as error:
      return error
    raise AssertionError("expected an error")

  def unraisable(error, obj=None):
    return types.SimpleNamespace(
      exc_type=type(error),
      exc_value=error,
      exc_traceback=error.__traceback__,
      err_msg=None,
      object=obj,
    )

  closed = asyncio.new_event_loop()
  closed.close()
  late_read = raised(lambda: closed.call_soon_threadsafe(print))
  late_callback = raised(lambda: closed.call_soon(print))
  assert str(late_read) == str(late_callback) == "Event loop is closed"
  orbax_read = types.SimpleNamespace(
    cr_code=serialization._read_array_index_and_device_put.__code__
  )
  other_coroutine = types.SimpleNamespace(cr_code=unraisable.__code__)

  reported = []
  monkeypatch.setattr(sys, "unraisablehook", reported.append)
  checkpoints.absorb_abandoned_reads()
  checkpoints.absorb_abandoned_reads()  # idempotent: one filter, not a chain
  before = checkpoints.ABANDONED_READS["absorbed"]
  sys.unraisablehook(unraisable(Exception("Encountered error while reading"), orbax_read))
  sys.unraisablehook(unraisable(late_read))
  others = [
    unraisable(late_callback),
    unraisable(RuntimeError("Event loop is closed")),
    unraisable(ValueError("Event loop is closed")),
    unraisable(Exception("boom"), other_coroutine),
  ]
  for report in others:
    sys.unraisablehook(report)
  assert checkpoints.ABANDONED_READS["absorbed"] - before == 2
  assert reported == others

  # asyncio's log record of a failed task nobody awaited: an Orbax read's is dropped
  import logging

  records = []
  handler = logging.Handler()
  handler.emit = records.append
  asyncio_logger = logging.getLogger("asyncio")
  asyncio_logger.addHandler(handler)
  try:
    before = checkpoints.ABANDONED_READS["absorbed"]
    asyncio_logger.error(
      "Task exception was never retrieved\nfuture: <Task finished coro=<"
      "_read_array_index_and_device_put() done, defined at %s>>",
      serialization.__file__,
    )
    asyncio_logger.error(
      "_GatheringFuture exception was never retrieved\nfuture: <_GatheringFuture finished "
      "exception=Exception('Encountered error while reading array index: (slice(0, 2, 1),)')>"
    )
    asyncio_logger.error("Task exception was never retrieved\nfuture: <Task coro=<judge()>>")
    asyncio_logger.error("Unclosed client session (orbax)")
  finally:
    asyncio_logger.removeHandler(handler)
  assert checkpoints.ABANDONED_READS["absorbed"] - before == 2
  assert [r.getMessage().split("\n")[-1] for r in records] == [
    "future: <Task coro=<judge()>>",
    "Unclosed client session (orbax)",
  ]


def test_flipped_bit_in_the_values_fails_the_checksums(two_steps, tmp_path):
  """A bit flipped where the reader cannot see it (the restored values) is caught by the
  checksums: rewrite step 9's checksum file as if a value had changed."""
  import json
  import pathlib
  import shutil

  config, workdir, _ = two_steps
  run = str(tmp_path / "run")
  shutil.copytree(workdir, run)
  path = checkpoints.checksum_path(checkpoints.checkpoint_dir(run), 9)
  values = json.loads(pathlib.Path(path).read_text())
  name = "params/decoder/layers/mlp/up_proj/kernel"
  values[name] ^= 1
  pathlib.Path(path).write_text(json.dumps(values))
  with pytest.raises(checkpoints.CheckpointError, match=rf"step 9: 1 array\(s\) differ .*{name}"):
    checkpoints.restore_params(run, config.model, step=9)
  assert checkpoints.restore_params(run, config.model)[1] == 5


def test_no_usable_step_is_one_error(two_steps, tmp_path):
  import os
  import shutil

  config, workdir, _ = two_steps
  run = str(tmp_path / "run")
  shutil.copytree(workdir, run)
  for step in ("5", "9"):
    _delete(_array_files(os.path.join(checkpoints.checkpoint_dir(run), step, "state"))[-1])
  with pytest.raises(checkpoints.CheckpointError, match=r"no usable checkpoint: step 9 .*; step 5"):
    checkpoints.restore_params(run, config.model)


def test_read_only_open_does_not_warn(two_steps, caplog):
  """Orbax warns at every read-only open; `open_manager` (every evaluation's) keeps that out of
  the log, and only that: the steps are there, and absl's other records still pass."""
  import logging

  _, workdir, _ = two_steps
  with caplog.at_level(logging.INFO):
    manager = checkpoints.open_manager(checkpoints.checkpoint_dir(workdir))
    steps = manager.all_steps()
    manager.close()
    logging.getLogger("absl").warning("Given directory is read only=%s and more", "x")
  assert sorted(steps) == [5, 9]
  messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert messages == ["Given directory is read only=x and more"]
