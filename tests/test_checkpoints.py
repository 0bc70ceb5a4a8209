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
