"""SiglipVisionEncoder: shapes, patch order, padding, scan/remat equivalence, logical names."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import linen as nn

from medq_jax.models.layers import REMAT_POLICIES
from medq_jax.models.vit import SiglipVisionEncoder, image_to_patches


def tiny_config(**overrides):
  config = dict(
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    patch_size=4,
    image_size=32,
    num_channels=3,
    layer_norm_eps=1e-6,
  )
  config.update(overrides)
  return ml_collections.ConfigDict(config)


def _bagel_patchify(image_chw: np.ndarray, p: int) -> np.ndarray:
  """NumPy transcription of BAGEL data/data_utils.py `patchify` on one [C, H, W] image."""
  c, h, w = image_chw.shape
  x = image_chw.reshape(c, h // p, p, w // p, p)
  x = np.einsum("chpwq->hwpqc", x)
  return x.reshape(-1, p * p * c)


def _bagel_position_ids(h, w, p, grid_side):
  """BAGEL `get_flattened_position_ids_extrapolate`."""
  rows, cols = h // p, w // p
  return (np.arange(rows)[:, None] * grid_side + np.arange(cols)).reshape(-1)


def test_image_to_patches_matches_bagel_patchify():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 12, 8, 3)).astype(np.float32)
  patches, ids = image_to_patches(jnp.asarray(images), patch_size=4, grid_side=5)
  assert patches.shape == (2, 6, 48) and ids.shape == (2, 6)
  for b in range(2):
    np.testing.assert_array_equal(
      np.asarray(patches[b]), _bagel_patchify(images[b].transpose(2, 0, 1), 4)
    )
    np.testing.assert_array_equal(np.asarray(ids[b]), _bagel_position_ids(12, 8, 4, 5))


def test_image_to_patches_errors():
  with pytest.raises(ValueError, match="multiple of patch_size"):
    image_to_patches(jnp.zeros((1, 10, 8, 3)), 4, 8)
  with pytest.raises(ValueError, match="position grid"):
    image_to_patches(jnp.zeros((1, 40, 8, 3)), 4, 8)


def random_like(boxed_shapes, seed=0):
  """Random params for a tree of (boxed) ShapeDtypeStructs; cheaper than compiling `init`."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    shape, name = leaf.shape, jax.tree_util.keystr(path)
    if "kernel" in name:
      return rng.normal(0, 1 / np.sqrt(shape[-2]), shape).astype(np.float32)
    if "scale" in name:
      return (1 + 0.1 * rng.normal(size=shape)).astype(np.float32)
    return (0.1 * rng.normal(size=shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, boxed_shapes)


@pytest.fixture(scope="module")
def model_and_params():
  config = tiny_config()
  model = SiglipVisionEncoder(config)
  patches, ids = image_to_patches(jnp.zeros((1, 16, 16, 3)), 4, 8)
  variables = random_like(jax.eval_shape(model.init, jax.random.key(0), patches, ids))
  return config, model, variables


def test_init_runs():
  model = SiglipVisionEncoder(tiny_config(num_layers=1), remat_policy="full")
  patches, ids = image_to_patches(jnp.zeros((1, 8, 8, 3)), 4, 8)
  out, variables = jax.jit(model.init_with_output)(jax.random.key(0), patches, ids)
  assert out.shape == (1, 4, 32) and bool(jnp.all(jnp.isfinite(out)))


def test_param_tree_and_logical_names(model_and_params):
  config, _, variables = model_and_params
  params = variables["params"]
  assert set(params) == {"embeddings", "encoder", "post_layernorm"}
  names = jax.tree.map(lambda x: x.names, params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert names["embeddings"]["patch_embedding"]["kernel"] == ("vit_patch", "vit_embed")
  assert names["embeddings"]["position_embedding"]["embedding"] == ("vit_pos", "vit_embed")
  layers = names["encoder"]["layers"]
  assert layers["self_attn"]["q_proj"]["kernel"] == ("layers", "vit_embed", "vit_heads_x_dim")
  assert layers["self_attn"]["out_proj"]["kernel"] == ("layers", "vit_heads_x_dim", "vit_embed")
  assert layers["mlp"]["fc1"]["kernel"] == ("layers", "vit_embed", "vit_mlp")
  assert layers["layer_norm1"]["scale"] == ("layers", "norm")
  assert names["post_layernorm"]["bias"] == ("norm",)
  unboxed = nn.unbox(params)
  assert unboxed["encoder"]["layers"]["mlp"]["fc1"]["kernel"].shape == (2, 32, 64)
  assert unboxed["embeddings"]["position_embedding"]["embedding"].shape == (64, 32)


def test_padding_patches_do_not_change_valid_outputs(model_and_params):
  config, model, variables = model_and_params
  images = jax.random.normal(jax.random.key(1), (1, 12, 16, 3))
  patches, ids = image_to_patches(images, 4, 8)
  apply = jax.jit(model.apply)
  reference = apply(variables, patches, ids)
  pad = 5
  padded = jnp.concatenate([patches, 7.0 * jnp.ones((1, pad, patches.shape[-1]))], axis=1)
  padded_ids = jnp.concatenate([ids, jnp.zeros((1, pad), ids.dtype)], axis=1)
  valid = jnp.arange(padded.shape[1])[None] < patches.shape[1]
  out = apply(variables, padded, padded_ids, valid)
  np.testing.assert_allclose(out[:, : patches.shape[1]], reference, atol=1e-5)


def test_unscanned_and_remat_match_scanned(model_and_params):
  config, model, variables = model_and_params
  patches, ids = image_to_patches(jax.random.normal(jax.random.key(2), (2, 16, 8, 3)), 4, 8)
  reference = jax.jit(model.apply)(variables, patches, ids)
  params = nn.unbox(variables["params"])
  layers = params["encoder"].pop("layers")
  for i in range(config.num_layers):
    params["encoder"][f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], layers)
  unscanned = SiglipVisionEncoder(config, scan_layers=False)
  np.testing.assert_allclose(
    jax.jit(unscanned.apply)({"params": params}, patches, ids), reference, atol=1e-5
  )

  def loss(model_, variables_):
    return jnp.sum(model_.apply(variables_, patches, ids) ** 2)

  grads = jax.jit(jax.grad(lambda v: loss(model, v)))(variables)
  # Every policy of the one shared table (the decoder uses the same) works for the ViT too.
  for policy in sorted(set(REMAT_POLICIES) - {"none"}):
    remat = SiglipVisionEncoder(config, remat_policy=policy)
    grads_remat = jax.jit(jax.grad(lambda v, m=remat: loss(m, v)))(variables)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
      nn.unbox(grads),
      nn.unbox(grads_remat),
    )


def test_bad_patch_dim_and_remat_name(model_and_params):
  config, model, variables = model_and_params
  with pytest.raises(ValueError, match="num_channels\\*patch_size"):
    model.apply(variables, jnp.zeros((1, 4, 10)), jnp.zeros((1, 4), jnp.int32))
  with pytest.raises(ValueError, match="remat_policy"):
    SiglipVisionEncoder(config, remat_policy="sometimes").init(
      jax.random.key(0), jnp.zeros((1, 4, 48)), jnp.zeros((1, 4), jnp.int32)
    )


def test_runs_sharded_under_logical_rules(model_and_params):
  """Params placed by their logical names and activations constrained on a 4x2 mesh."""
  config, model, variables = model_and_params
  devices = np.array(jax.devices()[:8])
  if devices.size < 8:
    pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
  mesh = jax.sharding.Mesh(devices.reshape(4, 2), ("data", "tensor"))
  rules = (
    ("act_batch", "data"),
    ("vit_mlp", "tensor"),
    ("vit_heads_x_dim", "tensor"),
    ("layers", None),
    ("vit_embed", None),
    ("vit_patch", None),
    ("vit_pos", None),
    ("norm", None),
    ("act_len", None),
    ("act_embed", None),
  )
  specs = nn.get_partition_spec(variables)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  placed = jax.device_put(nn.unbox(variables), shardings)
  assert placed["params"]["encoder"]["layers"]["mlp"]["fc1"][
    "kernel"
  ].sharding.spec == jax.sharding.PartitionSpec(None, None, "tensor")
  patches, ids = image_to_patches(jax.random.normal(jax.random.key(3), (4, 16, 16, 3)), 4, 8)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    out = jax.jit(model.apply)(placed, patches, ids)
  np.testing.assert_allclose(out, jax.jit(model.apply)(variables, patches, ids), atol=1e-5)
