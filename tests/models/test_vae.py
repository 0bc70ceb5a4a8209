"""FluxAutoEncoder shapes, posterior sampling, logical names; latent patchify order (BAGEL)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from medq_jax.models.vae import (
  FluxAutoEncoder,
  downsample_factor,
  patchify_latents,
  unpatchify_latents,
)


def random_like(boxed_shapes, seed=0):
  """Random params for a tree of (boxed) ShapeDtypeStructs, kept boxed; avoids compiling init.

  Kernels get std 1/sqrt(fan_in), norm scales 1 +- 0.1, biases 0.05 * normal.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    shape, name = leaf.shape, jax.tree_util.keystr(path)
    if "kernel" in name:
      return rng.normal(0, 1 / np.sqrt(np.prod(shape[:-1])), shape).astype(np.float32)
    if "scale" in name:
      return (1 + 0.1 * rng.normal(size=shape)).astype(np.float32)
    return (0.05 * rng.normal(size=shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, boxed_shapes)


@pytest.fixture(scope="module")
def vae(tiny_vae_config):
  config = tiny_vae_config
  model = FluxAutoEncoder(config)
  images = jax.random.uniform(jax.random.key(0), (2, 32, 48, 3), minval=-1, maxval=1)
  variables = random_like(jax.eval_shape(model.init, jax.random.key(1), images))
  return model, variables, images


def test_encode_decode_shapes(vae):
  model, variables, images = vae
  assert downsample_factor(model.config) == 8
  latents = jax.eval_shape(
    lambda x: model.apply(variables, x, method=FluxAutoEncoder.encode), images
  )
  assert latents.shape == (2, 4, 6, 16)
  decoded = jax.eval_shape(
    lambda z: model.apply(variables, z, method=FluxAutoEncoder.decode), latents
  )
  assert decoded.shape == (2, 32, 48, 3)


def test_mode_is_deterministic_and_sample_differs(vae):
  model, variables, images = vae

  @jax.jit
  def run(v, x):
    encode = lambda *a: model.apply(v, *a, method=FluxAutoEncoder.encode)
    moments = model.apply(v, x, method=FluxAutoEncoder.encode_moments)
    return (
      encode(x),
      encode(x),
      moments,
      encode(x, jax.random.key(5)),
      encode(x, jax.random.key(6)),
    )

  mode_a, mode_b, (mean, logvar), sample_a, sample_b = run(variables, images)
  np.testing.assert_array_equal(mode_a, mode_b)
  np.testing.assert_allclose(
    mode_a, model.config.scale_factor * (mean - model.config.shift_factor), atol=1e-6
  )
  assert not np.allclose(sample_a, mode_a) and not np.allclose(sample_a, sample_b)
  # The sample's spread around the mode is scale_factor * exp(0.5*logvar).
  z = (sample_a - mode_a) / (model.config.scale_factor * jnp.exp(0.5 * logvar))
  assert abs(float(jnp.std(z)) - 1.0) < 0.2


def test_logical_names(vae):
  _, variables, _ = vae
  names = jax.tree.map(
    lambda x: x.names, variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned)
  )
  assert set(names) == {"encoder", "decoder"}
  assert names["encoder"]["down_0"]["block_0"]["conv1"]["kernel"] == (
    "conv_h",
    "conv_w",
    "vae_in",
    "vae_out",
  )
  assert names["decoder"]["up_3"]["upsample"]["conv"]["bias"] == ("vae_channels",)
  assert names["decoder"]["mid"]["attn_1"]["norm"]["scale"] == ("vae_channels",)
  params = nn.unbox(variables["params"])
  assert (
    "downsample" not in params["encoder"]["down_3"] and "upsample" not in params["decoder"]["up_0"]
  )
  assert len([k for k in params["decoder"]["up_0"] if k.startswith("block_")]) == 3
  assert params["encoder"]["down_1"]["block_0"]["nin_shortcut"]["kernel"].shape == (1, 1, 32, 64)


def test_remat_blocks_keeps_param_tree(vae):
  model, variables, images = vae
  remat = FluxAutoEncoder(model.config, remat_blocks=True)
  shapes = jax.eval_shape(remat.init, jax.random.key(0), images)
  assert jax.tree.structure(nn.unbox(shapes)) == jax.tree.structure(nn.unbox(variables))


def test_input_shape_errors(vae):
  model, variables, _ = vae
  with pytest.raises(ValueError, match="multiples of 8"):
    model.apply(variables, jnp.zeros((1, 20, 16, 3)), method=FluxAutoEncoder.encode)
  with pytest.raises(ValueError, match="latents"):
    model.apply(variables, jnp.zeros((1, 2, 2, 4)), method=FluxAutoEncoder.decode)


def _bagel_latent_tokens(latent_chw: np.ndarray, p: int) -> np.ndarray:
  """NumPy transcription of BAGEL bagel.py: reshape(C, h, p, w, p), einsum('chpwq->hwpqc')."""
  c, hh, ww = latent_chw.shape
  h, w = hh // p, ww // p
  x = latent_chw[:, : h * p, : w * p].reshape(c, h, p, w, p)
  return np.einsum("chpwq->hwpqc", x).reshape(-1, p * p * c)


def test_patchify_matches_bagel_and_roundtrips():
  latents = np.random.default_rng(0).normal(size=(2, 6, 4, 16)).astype(np.float32)
  tokens = patchify_latents(jnp.asarray(latents), 2)
  assert tokens.shape == (2, 6, 64)
  for b in range(2):
    np.testing.assert_array_equal(
      np.asarray(tokens[b]), _bagel_latent_tokens(latents[b].transpose(2, 0, 1), 2)
    )
  np.testing.assert_array_equal(np.asarray(unpatchify_latents(tokens, 6, 4, 2)), latents)


def test_patchify_errors():
  with pytest.raises(ValueError, match="not divisible by p=2"):
    patchify_latents(jnp.zeros((1, 5, 4, 16)))
  with pytest.raises(ValueError, match="not divisible by p=2"):
    unpatchify_latents(jnp.zeros((1, 6, 64)), 5, 4)
  with pytest.raises(ValueError, match="do not fit"):
    unpatchify_latents(jnp.zeros((1, 7, 64)), 6, 4)


@pytest.mark.parametrize("groups", [1, 4, 8])
def test_group_norm_matches_torch_and_flax(groups):
  """`GroupNorm` (positions reduced first, then each group's channels) against PyTorch's
  `nn.GroupNorm`, FLUX's own layer: outputs and the gradients of input, scale and bias."""
  import torch

  from medq_jax.models.vae import GroupNorm

  rng = np.random.default_rng(groups)
  x = (3 * rng.normal(size=(2, 6, 5, 16)) + 2).astype(np.float32)  # offset: two-pass matters
  scale = (1 + 0.2 * rng.normal(size=16)).astype(np.float32)
  bias = (0.3 * rng.normal(size=16)).astype(np.float32)
  weight = rng.normal(size=x.shape).astype(np.float32)
  variables = {"params": {"scale": scale, "bias": bias}}
  norm = GroupNorm(groups)

  def loss(v, x):
    return jnp.sum(jnp.tanh(norm.apply(v, x)) * weight)

  out = norm.apply(variables, x)
  grads, dx = jax.grad(loss, argnums=(0, 1))(variables, x)

  reference = torch.nn.GroupNorm(groups, 16, eps=1e-6)
  with torch.no_grad():
    reference.weight.copy_(torch.from_numpy(scale))
    reference.bias.copy_(torch.from_numpy(bias))
  x_torch = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
  out_torch = reference(x_torch)
  (torch.tanh(out_torch) * torch.from_numpy(weight).permute(0, 3, 1, 2)).sum().backward()
  np.testing.assert_allclose(out, out_torch.detach().permute(0, 2, 3, 1), atol=1e-5)
  np.testing.assert_allclose(dx, x_torch.grad.permute(0, 2, 3, 1), atol=1e-5)
  np.testing.assert_allclose(grads["params"]["scale"], reference.weight.grad, atol=1e-4)
  np.testing.assert_allclose(grads["params"]["bias"], reference.bias.grad, atol=1e-4)
  # flax's two-pass GroupNorm, the layer this one replaced, with the same parameter tree.
  flax_norm = nn.GroupNorm(num_groups=groups, epsilon=1e-6, use_fast_variance=False)
  assert jax.tree.structure(flax_norm.init(jax.random.key(0), x)) == jax.tree.structure(
    nn.unbox(norm.init(jax.random.key(0), x))
  )
  np.testing.assert_allclose(out, flax_norm.apply(variables, x), atol=1e-5)


def test_group_norm_dtype_and_bad_groups():
  from medq_jax.models.vae import GroupNorm

  x = jnp.ones((1, 2, 2, 8), jnp.bfloat16).at[0, 0, 0].set(3)
  norm = GroupNorm(2, dtype=jnp.bfloat16)
  out = norm.apply(norm.init(jax.random.key(0), x), x)
  assert out.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(out)))
  with pytest.raises(ValueError, match="12 channels do not split into 8 groups"):
    GroupNorm(8).init(jax.random.key(0), jnp.ones((1, 2, 2, 12)))
