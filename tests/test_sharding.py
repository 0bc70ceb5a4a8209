"""Sharding: golden PartitionSpecs for `small` on a (2, 2, 2) mesh, sharded init, and a jitted
forward with NamedShardings that equals the unsharded forward."""

import json
import os
import pathlib

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from configs import medq_uni
from medq_jax import layout as layout_lib
from medq_jax import sharding as sharding_lib
from medq_jax.train import state as state_lib
from medq_jax.train.param_specs import param_partition_specs
from medq_jax.types import latent_dim

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "small_param_specs.json")


def test_small_param_specs_match_golden_file():
  config = medq_uni.get_config("size=small,mesh=2x2x2")
  actual = param_partition_specs(config)
  expected = json.loads(pathlib.Path(GOLDEN).read_text())
  assert sorted(actual) == sorted(expected), "parameter set changed"
  diff = {k: (expected[k], actual[k]) for k in expected if expected[k] != actual[k]}
  assert not diff, (
    f"PartitionSpecs changed (regenerate with launch/dump_param_shardings.py if intended): {diff}"
  )
  # Spot checks that state the rules in words.
  assert actual["params/decoder/layers/self_attn/q_proj/kernel"] == [None, "fsdp", "tensor"]
  assert actual["params/decoder/layers/mlp_moe_gen/down_proj/kernel"] == [None, "tensor", "fsdp"]
  assert actual["params/embed_tokens/embedding"] == ["tensor", "fsdp"]


def test_mesh_shape_resolution():
  assert sharding_lib.resolve_mesh_shape((1, -1, 2), 8) == (1, 4, 2)
  import pytest

  with pytest.raises(ValueError, match="mesh.shape"):
    sharding_lib.resolve_mesh_shape((3, -1, 1), 8)
  with pytest.raises(ValueError, match=r"mesh.shape: expected \(data, fsdp, tensor\) integers"):
    sharding_lib.resolve_mesh_shape("abc", 8)
  with pytest.raises(ValueError, match="sizes must be positive"):
    sharding_lib.resolve_mesh_shape((0, -1, 1), 8)


def test_sharded_init_and_jitted_forward_equal_unsharded():
  assert jax.device_count() == 8
  config = medq_uni.get_config("size=tiny,mesh=2x2x2,stage=2")
  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, 2)
  model, vae = state_lib.build_models(config.model)
  mesh = sharding_lib.make_mesh(config.mesh)
  params, _, param_shardings, _ = state_lib.init_params_sharded(
    model, vae, spec, config.model, mesh, config.sharding_rules, jax.random.PRNGKey(0)
  )
  kernel = params["decoder"]["layers"]["mlp"]["up_proj"]["kernel"]
  assert kernel.sharding.spec == P(None, "fsdp", "tensor")
  assert len(kernel.addressable_shards) == 8
  assert kernel.addressable_shards[0].data.shape == (
    kernel.shape[0],
    kernel.shape[1] // 2,
    kernel.shape[2] // 2,
  )

  rng = np.random.default_rng(0)
  batch = layout_lib.zeros_batch(spec, 4, latent_dim(config.model))
  batch["und_token_ids"] = rng.integers(5, 500, batch["und_token_ids"].shape).astype(np.int32)
  batch["und_positions"] = np.broadcast_to(
    np.arange(spec.max_und_len), (4, spec.max_und_len)
  ).astype(np.int32)
  batch["gen_latents"] = rng.normal(size=batch["gen_latents"].shape).astype(np.float32)
  batch_shardings = {k: sharding_lib.batch_sharding(mesh) for k in batch}
  with sharding_lib.mesh_context(mesh, config.sharding_rules):
    forward = jax.jit(
      lambda p, b: model.apply({"params": p}, b), in_shardings=(param_shardings, batch_shardings)
    )
    sharded_batch = sharding_lib.global_batch(batch, mesh)
    out = forward(params, sharded_batch)
  assert out["logits"].sharding.spec[0] == ("data", "fsdp")
  host_params = jax.tree_util.tree_map(np.asarray, params)
  reference = model.apply({"params": host_params}, batch)
  np.testing.assert_allclose(np.asarray(out["logits"]), reference["logits"], atol=2e-5)
  np.testing.assert_allclose(np.asarray(out["velocity"]), reference["velocity"], atol=2e-5)
