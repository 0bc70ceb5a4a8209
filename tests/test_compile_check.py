"""The worked memory budget (launch/memory_budget.py, docs/scale.md) against XLA's
memory_analysis() of the compiled sharded train step, on `tiny` with 8 fake CPU devices."""

import math

import jax
import numpy as np
import pytest

from configs import medq_uni
from launch import memory_budget as budget_lib
from medq_jax import layout as layout_lib
from medq_jax import sharding as sharding_lib
from medq_jax.train import state as state_lib


def _config(stage: int, mesh: str = "1x8x1", remat: str = "full"):
  config = medq_uni.get_config(f"size=tiny,stage={stage},scope=all,mesh={mesh}")
  config.model.remat_policy = remat
  return config


def _shard_bytes_oracle(leaf, mesh) -> int:
  """Bytes of one device's shard from the PartitionSpec alone: each dimension divided by the
  sizes of the mesh axes it is split over (rounded up, as XLA pads)."""
  shape = list(leaf.shape)
  for dim, axes in enumerate(leaf.sharding.spec):
    for axis in (axes,) if isinstance(axes, str) else axes or ():
      shape[dim] = -(-shape[dim] // mesh.shape[axis])
  return math.prod(shape) * np.dtype(leaf.dtype).itemsize


@pytest.fixture(scope="module")
def stage2():
  assert jax.device_count() == 8
  return budget_lib.check(_config(2))


def test_worked_arguments_equal_the_compiled_ones(stage2):
  budget, memory, _, step = stage2
  # Equal, up to batch fields the step never reads (JAX drops unused arguments: `tiny` stage 2
  # does not read `gen_image_index`).
  assert 0 <= budget.arguments - memory.argument_size_in_bytes <= budget.batch
  assert budget.arguments - budget.batch < memory.argument_size_in_bytes
  # The donated state comes back in place: every output but the metrics aliases an argument.
  assert memory.output_size_in_bytes - memory.alias_size_in_bytes < 4096
  assert budget_lib.compiled_peak(memory) >= memory.argument_size_in_bytes + budget.grads


def test_shard_bytes_against_the_partition_specs(stage2):
  budget, _, _, step = stage2
  leaves = jax.tree_util.tree_leaves(step.state.params)
  assert budget.params == sum(_shard_bytes_oracle(leaf, step.mesh) for leaf in leaves)
  # 8-way FSDP: the big kernels are split 8 ways, so a device holds well under a quarter.
  whole = sum(leaf.size * 4 for leaf in leaves)
  assert budget.params < whole / 4


def test_moments_are_sharded_like_their_parameters(stage2):
  _, _, _, step = stage2
  params = {
    jax.tree_util.keystr(path): leaf
    for path, leaf in jax.tree_util.tree_flatten_with_path(step.state.params)[0]
  }
  matched = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(step.state.opt_state)[0]:
    name = jax.tree_util.keystr(path)
    owners = [p for key, p in params.items() if name.endswith(key)]
    if leaf.ndim == 0:
      assert not owners and not leaf.sharding.spec  # counts: replicated scalars
      continue
    assert len(owners) == 1, name
    assert leaf.shape == owners[0].shape and leaf.sharding == owners[0].sharding, name
    matched += 1
  assert matched == 2 * len(params)  # stage 2: mu and nu of every parameter


def test_stage1_holds_moments_and_grads_of_the_gen_subtree_only(stage2):
  step1 = budget_lib.abstract_step(_config(1), check_loop_init=False)
  budget1, budget2 = budget_lib.worked_budget(step1), stage2[0]
  trainable, frozen = state_lib.split_params(step1.state.params, step1.config.train)
  assert frozen and trainable
  assert budget1.grads == budget_lib.shard_bytes(trainable)
  counts = [x for x in jax.tree_util.tree_leaves(step1.state.opt_state) if x.ndim == 0]
  # mu and nu, fp32 like the parameters, plus the optimizer's step counters.
  assert budget1.moments == 2 * budget1.grads + sum(x.dtype.itemsize for x in counts)
  assert budget1.params == budget2.params
  assert budget1.grads < budget2.grads and budget1.moments < budget2.moments
  assert budget1.logits == 0 < budget2.logits  # stage 1 has no CE


def test_saved_activations_follow_the_remat_policy():
  config = _config(2)
  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, config.train.stage)
  mesh = sharding_lib.make_mesh(config.mesh)
  saved = {}
  for policy in ("full", "dots_with_no_batch_dims_saveable", "none"):
    config = _config(2, remat=policy)
    saved[policy] = budget_lib.activation_bytes(config, spec, mesh)[0]
  assert saved["full"] < saved["dots_with_no_batch_dims_saveable"] < saved["none"]
  deeper = _config(2)
  deeper.model.llm.num_layers *= 3
  assert budget_lib.activation_bytes(deeper, spec, mesh)[0] == 3 * saved["full"]
  # Twice the batch on the same 8 devices: twice the rows per device.
  bigger = _config(2)
  bigger.train.batch_size *= 2
  assert budget_lib.activation_bytes(bigger, spec, mesh)[0] == 2 * saved["full"]
  # Two examples packed per row (und budget 2 x max_und_len): each row twice as long, so twice
  # the saved layer inputs and LM-head logits, four times the fp32 attention logits.
  packed = _config(2)
  packed.layout.pack_examples_per_row = 2
  packed_spec = layout_lib.LayoutSpec.from_config(packed.model, packed.layout, 2)
  one = budget_lib.activation_bytes(_config(2), spec, mesh)
  two = budget_lib.activation_bytes(packed, packed_spec, mesh)
  assert two[0] == 2 * one[0] and two[2] == 2 * one[2]
  assert two[1] > 2 * one[1]


def test_a_bad_topology_is_one_message():
  with pytest.raises(SystemExit, match=r"--topology=v9x:1x1: no TPU topology"):
    budget_lib.topology_devices("v9x:1x1")
