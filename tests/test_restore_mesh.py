"""Restore onto another mesh and device count: a checkpoint written by the trainer's save from a
tiny model sharded over 8 (fake CPU) devices restores, parameters only, in processes that have 4
and 1 devices, through `checkpoints.restore_params` (evaluation) and `init.from_checkpoint`
(fine-tuning), in fp32 (equal to the saved values) and bf16 (equal to their cast).

Run as a script, this file is the restoring process:
  XLA_FLAGS=--xla_force_host_platform_device_count=4 PYTHONPATH=. \
    python tests/test_restore_mesh.py WORKDIR MESH OUT_PREFIX
"""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import medq_uni
from medq_jax import checkpoints
from medq_jax import sharding as sharding_lib
from medq_jax.convert.core import flatten
from medq_jax.models.medq_uni import abstract_params
from medq_jax.train import checkpoint as checkpoint_lib
from medq_jax.train import state as state_lib
from medq_jax.train.pretrained import load_initial_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "size=tiny,scope=all,stage=2"
SAVED_STEP = 5
KERNEL = "decoder/layers/mlp/up_proj/kernel"  # sharded over fsdp and tensor


def _restore_everywhere(workdir: str, mesh_spec: str, out_prefix: str) -> None:
  """Restores `workdir` onto this process's devices in four ways; writes every parameter (as
  float32) to OUT_PREFIX.npz and what each leaf came back as to OUT_PREFIX.json."""
  arrays, info = {}, {"device_count": jax.device_count()}
  for dtype in ("float32", "bfloat16"):
    config = medq_uni.get_config(f"{CONFIG},mesh={mesh_spec}")
    mesh = sharding_lib.make_mesh(config.mesh)
    info["mesh"] = dict(mesh.shape)
    params, step = checkpoints.restore_params(
      workdir, config.model, mesh=mesh, rules=config.sharding_rules, dtype=dtype
    )
    assert step == SAVED_STEP, step
    # Fine-tuning: the run's own parameters (param_dtype) are the restore target.
    with config.unlocked():
      config.model.param_dtype = dtype
      config.init.from_checkpoint = workdir
    boxed = abstract_params(config.model)
    shardings = sharding_lib.mesh_shardings(boxed, mesh, config.sharding_rules)
    target = jax.tree_util.tree_map(
      lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
      nn.unbox(boxed),
      shardings,
    )
    initial, _ = load_initial_weights(
      config.init, config.model, target, {}, mesh, config.sharding_rules
    )
    for way, tree in (("restore_params", params), ("from_checkpoint", initial)):
      for path, leaf in flatten(tree).items():
        arrays[f"{way}/{dtype}/{path}"] = np.asarray(jax.device_get(leaf), np.float32)
      kernel = flatten(tree)[KERNEL]
      info[f"{way}/{dtype}"] = dict(
        dtypes=sorted({str(leaf.dtype) for leaf in flatten(tree).values()}),
        kernel_spec=str(kernel.sharding.spec),
        kernel_devices=len(kernel.sharding.device_set),
        kernel_shard=list(kernel.addressable_shards[0].data.shape),
      )
  np.savez(out_prefix + ".npz", **arrays)
  with open(out_prefix + ".json", "w") as f:
    json.dump(info, f)


if __name__ == "__main__":
  _restore_everywhere(*sys.argv[1:])


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, placed_params):
  """A workdir whose step-5 checkpoint (params + AdamW state + data position) was saved by the
  trainer's `checkpoint.save` from a state sharded over all 8 devices (mesh 2x2x2)."""
  import grain

  assert jax.device_count() == 8
  config = medq_uni.get_config(f"{CONFIG},mesh=2x2x2")
  params, _ = placed_params(config, seed=11)
  optimizer = state_lib.make_optimizer(config.train, params)

  def make_state(params):
    state = state_lib.create_train_state(params, optimizer)
    # A non-trivial optimizer state, so that a restore mixing it in could not pass.
    return state.replace(
      step=jnp.asarray(SAVED_STEP, jnp.int32),
      opt_state=jax.tree_util.tree_map(
        lambda x: x + 1 if jnp.issubdtype(x.dtype, jnp.floating) else x, state.opt_state
      ),
    )

  state = jax.jit(make_state)(params)
  kernel = flatten(state.params)[KERNEL]
  assert len(kernel.sharding.device_set) == 8 and kernel.addressable_shards[0].data.shape != (
    kernel.shape
  )
  workdir = str(tmp_path_factory.mktemp("run8"))
  iterator = iter(grain.MapDataset.range(4).to_iter_dataset())
  manager = checkpoint_lib.make_manager(checkpoints.checkpoint_dir(workdir))
  checkpoint_lib.save(manager, SAVED_STEP, state, iterator, force=True)
  manager.wait_until_finished()
  manager.close()
  return workdir, {path: np.asarray(leaf) for path, leaf in flatten(state.params).items()}


def _run_restores(env, workdir, mesh_spec, out_prefix):
  env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
  return subprocess.Popen(
    [sys.executable, os.path.abspath(__file__), workdir, mesh_spec, out_prefix],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def test_restore_from_8_devices_onto_4_and_1(saved_run, tmp_path, subprocess_env):
  workdir, saved = saved_run
  meshes = {4: ("1x-1x2", {"data": 1, "fsdp": 2, "tensor": 2}), 1: ("1x-1x1", None)}
  procs = {
    n: _run_restores(subprocess_env(devices=n), workdir, spec, str(tmp_path / f"on{n}"))
    for n, (spec, _) in meshes.items()
  }
  for n, proc in procs.items():
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{n} devices:\n{output[-3000:]}"
  bf16 = {
    path: np.asarray(jnp.asarray(value, jnp.bfloat16), np.float32) for path, value in saved.items()
  }
  for n, (_, mesh_shape) in meshes.items():
    info = json.loads((tmp_path / f"on{n}.json").read_text())
    restored = np.load(tmp_path / f"on{n}.npz")
    assert info["device_count"] == n
    if mesh_shape:
      assert info["mesh"] == mesh_shape
    for way in ("restore_params", "from_checkpoint"):
      for dtype, expected in (("float32", saved), ("bfloat16", bf16)):
        leaves = info[f"{way}/{dtype}"]
        assert leaves["dtypes"] == [dtype], (n, way, leaves)
        assert leaves["kernel_devices"] == n
        assert leaves["kernel_spec"] == str(jax.sharding.PartitionSpec(None, "fsdp", "tensor"))
        shape = saved[KERNEL].shape
        want = [shape[0], shape[1] // (2 if n == 4 else 1), shape[2] // (2 if n == 4 else 1)]
        assert leaves["kernel_shard"] == want
        names = sorted(
          k.split("/", 2)[2] for k in restored.files if k.startswith(f"{way}/{dtype}/")
        )
        assert names == sorted(saved)
        for path, value in expected.items():
          np.testing.assert_array_equal(
            restored[f"{way}/{dtype}/{path}"], value, err_msg=f"{n} devices {way} {dtype} {path}"
          )
