"""SigLIP and FLUX-VAE conversion: parity with PyTorch references, round trips, error reports.

References: transformers' `SiglipVisionModel` (ViT) and diffusers' `AutoencoderKL` configured
like FLUX (VAE), whose state dict is renamed to FLUX `ae.safetensors` names here, independently
of our rules (the inverse of diffusers' own `convert_ldm_vae_checkpoint` mapping).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn
from safetensors.torch import save_file

from medq_jax.convert.core import (
  ConversionError,
  export_params,
  flatten,
  iter_safetensors,
  load_params,
  save_safetensors,
)
from medq_jax.convert.flux_vae import flux_vae_rules
from medq_jax.convert.siglip import (
  config_from_siglip,
  load_siglip,
  siglip_ignore_patterns,
  siglip_rules,
)
from medq_jax.models.vae import FluxAutoEncoder
from medq_jax.models.vit import SiglipVisionEncoder, image_to_patches

# ----------------------------------------------------------------------------- SigLIP


def _perturb_(module: torch.nn.Module, seed: int):
  """Moves every weight off its default init so that norms and biases are exercised."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in module.named_parameters():
      noise = torch.randn(param.shape, generator=gen)
      if re.search(r"(norm\w*)\.weight$", name):
        param.copy_(1 + 0.1 * noise)
      else:
        param.add_(0.05 * noise)


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
  from transformers import SiglipVisionConfig, SiglipVisionModel

  torch.manual_seed(0)
  hf_config = SiglipVisionConfig(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_channels=3,
    image_size=32,
    patch_size=8,
    layer_norm_eps=1e-6,
    attn_implementation="eager",
  )
  torch_model = SiglipVisionModel(hf_config).eval()
  _perturb_(torch_model, seed=1)
  directory = tmp_path_factory.mktemp("siglip")
  torch_model.save_pretrained(directory)  # transformers 5: keys without 'vision_model.'
  config = config_from_siglip(hf_config.to_dict())
  model = SiglipVisionEncoder(config)
  patches, ids = image_to_patches(jnp.zeros((1, 32, 32, 3)), config.patch_size, 4)
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), patches, ids))["params"]
  state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  return torch_model, model, shapes, directory, state


def _load(shapes, tensors, prefix, **kwargs):
  return load_params(
    shapes, tensors, siglip_rules(prefix, **kwargs), ignore=siglip_ignore_patterns(prefix)
  )


def test_siglip_parity_with_transformers(siglip):
  torch_model, model, shapes, directory, _ = siglip
  params = _load(shapes, iter_safetensors(str(directory)), "")
  pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
  with torch.no_grad():
    expected = torch_model(pixel_values=pixels).last_hidden_state.numpy()
  patches, ids = image_to_patches(jnp.asarray(pixels.numpy().transpose(0, 2, 3, 1)), 8, 4)
  ours = np.asarray(jax.jit(model.apply)({"params": params}, patches, ids))
  assert ours.shape == expected.shape == (2, 16, 32)
  assert np.max(np.abs(ours - expected)) <= 1e-4


def test_siglip_export_roundtrip(siglip, tmp_path):
  _, _, shapes, directory, state = siglip
  params = _load(shapes, iter_safetensors(str(directory)), "")
  exported = dict(export_params(params, siglip_rules("")))
  expected = {k: v for k, v in state.items() if not k.startswith("head.")}
  assert set(exported) == set(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  files = save_safetensors(exported.items(), str(tmp_path / "vit.safetensors"))
  reloaded = _load(shapes, iter_safetensors(files), "")
  jax.tree.map(np.testing.assert_array_equal, reloaded, params)


def _bagel_state(state):
  """The tower as BAGEL stores it: prefixed, no head, Linear patch embedding.

  Transcribes BAGEL's `SiglipVisionEmbeddings.convert_conv2d_to_linear`:
  ``weight.permute(0, 2, 3, 1).reshape(D, C * p * p)``.
  """
  out = {}
  for key, value in state.items():
    if key.startswith("head."):
      continue
    if key == "embeddings.patch_embedding.weight":
      value = value.transpose(0, 2, 3, 1).reshape(value.shape[0], -1)
    out[f"vit_model.vision_model.{key}"] = value
  out["language_model.model.embed_tokens.weight"] = np.zeros((4, 4), np.float32)  # not the ViT's
  return out


def _save(tensors, path):
  save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}, str(path))
  return str(path)


def test_bagel_linear_patch_embedding_loads_same_params(siglip, tmp_path):
  _, _, shapes, directory, state = siglip
  reference = _load(shapes, iter_safetensors(str(directory)), "")
  bagel = _bagel_state(state)
  prefix = "vit_model.vision_model."
  params = load_siglip(shapes, _save(bagel, tmp_path / "ema.safetensors"))  # prefix detected
  jax.tree.map(np.testing.assert_array_equal, params, reference)
  with pytest.raises(ConversionError, match="language_model.model.embed_tokens.weight"):
    _load(shapes, bagel.items(), prefix)  # strict by default: keys outside the tower are reported
  exported = dict(export_params(params, siglip_rules(prefix)))
  np.testing.assert_array_equal(
    exported[f"{prefix}embeddings.patch_embedding.weight"],
    bagel[f"{prefix}embeddings.patch_embedding.weight"],
  )
  conv = dict(export_params(params, siglip_rules(prefix, patch_embedding_layout="conv")))
  np.testing.assert_array_equal(
    conv[f"{prefix}embeddings.patch_embedding.weight"], state["embeddings.patch_embedding.weight"]
  )


def test_load_siglip_hub_layout(siglip, tmp_path):
  """A hub SiglipModel file: 'vision_model.' prefix, a text tower and logit scale to skip."""
  _, _, shapes, directory, state = siglip
  hub = {f"vision_model.{k}": v for k, v in state.items()}
  hub.update(
    {
      "text_model.embeddings.token_embedding.weight": np.zeros((5, 4), np.float32),
      "logit_scale": np.zeros(1, np.float32),
    }
  )
  params = load_siglip(shapes, _save(hub, tmp_path / "model.safetensors"))
  jax.tree.map(np.testing.assert_array_equal, params, load_siglip(shapes, str(directory)))


def test_siglip_unscanned_rules(siglip):
  _, model, shapes, directory, _ = siglip
  stacked = _load(shapes, iter_safetensors(str(directory)), "")
  unscanned = SiglipVisionEncoder(model.config, scan_layers=False)
  patches, ids = image_to_patches(jnp.zeros((1, 32, 32, 3)), 8, 4)
  shapes_u = nn.unbox(jax.eval_shape(unscanned.init, jax.random.key(0), patches, ids))["params"]
  params = _load(shapes_u, iter_safetensors(str(directory)), "", scan_layers=False)
  for i in range(2):
    jax.tree.map(
      lambda a, b, i=i: np.testing.assert_array_equal(a, b[i]),
      params["encoder"][f"layers_{i}"],
      stacked["encoder"]["layers"],
    )


def test_missing_key_is_named(siglip):
  _, _, shapes, _, state = siglip
  tensors = {k: v for k, v in state.items() if k != "encoder.layers.1.mlp.fc2.bias"}
  with pytest.raises(ConversionError, match=r"encoder/layers/mlp/fc2/bias \(layers \[1\]\)"):
    _load(shapes, tensors.items(), "")


def test_unexpected_key_is_named(siglip):
  _, _, shapes, _, state = siglip
  tensors = dict(state, **{"encoder.layers.0.self_attn.rotary.weight": np.zeros(3, np.float32)})
  with pytest.raises(
    ConversionError, match=r"unexpected[\s\S]*encoder\.layers\.0\.self_attn\.rotary\.weight"
  ):
    _load(shapes, tensors.items(), "")


def test_shape_mismatch_is_named(siglip):
  _, _, shapes, _, state = siglip
  tensors = dict(state, **{"encoder.layers.0.mlp.fc1.weight": np.zeros((65, 32), np.float32)})
  with pytest.raises(
    ConversionError,
    match=r"encoder\.layers\.0\.mlp\.fc1\.weight -> encoder/layers/mlp/fc1/kernel\[0\]: "
    r"expected \(32, 64\), got \(32, 65\)",
  ):
    _load(shapes, tensors.items(), "")


# ----------------------------------------------------------------------------- FLUX VAE


def _vae_shapes(model, size=16):
  return nn.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3))))[
    "params"
  ]


def test_flux_vae_rules_roundtrip_and_names(tiny_vae_config, tmp_path):
  model = FluxAutoEncoder(tiny_vae_config)
  shapes = _vae_shapes(model)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  exported = dict(export_params(params, flux_vae_rules()))
  assert exported["encoder.down.1.block.0.nin_shortcut.weight"].shape == (64, 32, 1, 1)
  assert exported["encoder.mid.attn_1.proj_out.weight"].shape == (64, 64, 1, 1)
  assert exported["decoder.up.3.upsample.conv.weight"].shape == (64, 64, 3, 3)
  assert exported["decoder.up.0.block.2.norm2.weight"].shape == (32,)
  assert "encoder.down.3.downsample.conv.weight" not in exported
  assert "decoder.up.0.upsample.conv.weight" not in exported
  assert len(exported) == len(flatten(params))
  files = save_safetensors(exported.items(), str(tmp_path / "ae.safetensors"))
  reloaded = load_params(shapes, iter_safetensors(files), flux_vae_rules())
  jax.tree.map(np.testing.assert_array_equal, reloaded, params)
  prefixed = load_params(
    {"vae": shapes},
    ((f"first_stage.{k}", v) for k, v in exported.items()),
    flux_vae_rules("first_stage.", "vae"),
  )
  jax.tree.map(np.testing.assert_array_equal, prefixed["vae"], params)


def diffusers_to_flux_key(key: str, num_levels: int) -> str:
  """diffusers AutoencoderKL key -> FLUX ae key (inverse of diffusers' convert_ldm_vae_checkpoint)."""
  key = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", key)
  key = re.sub(
    r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", key
  )
  key = re.sub(
    r"^decoder\.up_blocks\.(\d+)\.",
    lambda m: f"decoder.up_blocks_flux.{num_levels - 1 - int(m.group(1))}.",
    key,
  )
  key = re.sub(r"up_blocks_flux\.(\d+)\.resnets\.", r"up.\1.block.", key)
  key = re.sub(r"up_blocks_flux\.(\d+)\.upsamplers\.0\.", r"up.\1.upsample.", key)
  key = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.", key)
  key = key.replace("mid_block.attentions.0.", "mid.attn_1.")
  for old, new in (
    ("group_norm", "norm"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out.0", "proj_out"),
    ("conv_shortcut", "nin_shortcut"),
    ("conv_norm_out", "norm_out"),
  ):
    key = key.replace(f".{old}.", f".{new}.")
  return key


def test_flux_vae_parity_with_diffusers(tiny_vae_config, tmp_path):
  diffusers = pytest.importorskip("diffusers")
  config = tiny_vae_config
  levels = len(config.ch_mult)
  torch.manual_seed(0)
  reference = diffusers.AutoencoderKL(
    in_channels=3,
    out_channels=3,
    latent_channels=config.z_channels,
    down_block_types=("DownEncoderBlock2D",) * levels,
    up_block_types=("UpDecoderBlock2D",) * levels,
    block_out_channels=tuple(config.ch * m for m in config.ch_mult),
    layers_per_block=2,
    norm_num_groups=config.norm_groups,
    use_quant_conv=False,
    use_post_quant_conv=False,
    scaling_factor=config.scale_factor,
    shift_factor=config.shift_factor,
  ).eval()
  _perturb_(reference, seed=2)
  flux_state = {}
  for key, value in reference.state_dict().items():
    value = value.numpy()
    if ".attentions.0.to_" in key and key.endswith(".weight"):
      value = value[:, :, None, None]  # Linear [C, C] -> 1x1 conv, as in FLUX's file
    flux_state[diffusers_to_flux_key(key, levels)] = value
  path = tmp_path / "ae.safetensors"
  save_file({k: torch.from_numpy(v) for k, v in flux_state.items()}, str(path))

  model = FluxAutoEncoder(config)
  params = load_params(_vae_shapes(model), iter_safetensors(str(path)), flux_vae_rules())
  variables = {"params": params}
  images = torch.rand(1, 3, 32, 24, generator=torch.Generator().manual_seed(4)) * 2 - 1
  with torch.no_grad():
    posterior = reference.encode(images).latent_dist
    latent = torch.randn(1, 16, 4, 3, generator=torch.Generator().manual_seed(5))
    decoded = reference.decode(latent).sample.numpy().transpose(0, 2, 3, 1)
  nhwc = jnp.asarray(images.numpy().transpose(0, 2, 3, 1))
  mean, logvar = jax.jit(lambda v, x: model.apply(v, x, method=FluxAutoEncoder.encode_moments))(
    variables, nhwc
  )
  np.testing.assert_allclose(mean, posterior.mean.numpy().transpose(0, 2, 3, 1), atol=1e-4)
  np.testing.assert_allclose(logvar, posterior.logvar.numpy().transpose(0, 2, 3, 1), atol=1e-4)
  scaled = config.scale_factor * (
    jnp.asarray(latent.numpy().transpose(0, 2, 3, 1)) - config.shift_factor
  )
  ours = jax.jit(lambda v, z: model.apply(v, z, method=FluxAutoEncoder.decode))(variables, scaled)
  np.testing.assert_allclose(ours, decoded, atol=1e-4)
