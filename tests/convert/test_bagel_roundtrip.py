"""BAGEL/UniMedVL checkpoint names: export -> safetensors -> load gives the same tree, tensor by
tensor; key names and torch layouts are BAGEL's; problems are reported by key."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from configs import medq_uni
from medq_jax import layout as layout_lib
from medq_jax.convert import bagel, core
from medq_jax.train import state as state_lib
from medq_jax.types import latent_dim


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  config = medq_uni.get_config("size=tiny,scope=all")
  config.model.llm.qk_norm = True
  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, 2)
  model, vae = state_lib.build_models(config.model)
  batch = layout_lib.zeros_batch(spec, 1, latent_dim(config.model))
  params = nn.unbox(model.init(jax.random.PRNGKey(0), batch)["params"])
  vae_params = nn.unbox(vae.init(jax.random.PRNGKey(1), batch["vae_images"][:, 0])["params"])
  params = jax.tree_util.tree_map(lambda x: np.asarray(x) + np.float32(0.0), params)
  params["llm2vae"]["kernel"] = (
    np.random.default_rng(0).normal(size=params["llm2vae"]["kernel"].shape).astype(np.float32)
  )
  out = tmp_path_factory.mktemp("bagel")
  files = bagel.export_bagel(
    config.model,
    params,
    jax.tree_util.tree_map(np.asarray, vae_params),
    str(out / "ema.safetensors"),
    str(out / "ae.safetensors"),
  )
  return config, params, vae_params, out, files


def test_exported_names_and_layouts_are_bagels(exported):
  config, params, _, out, _ = exported
  with safe_open(str(out / "ema.safetensors"), framework="numpy") as f:
    keys = set(f.keys())
    hidden = config.model.llm.hidden_size
    q = f.get_tensor("language_model.model.layers.1.self_attn.q_proj_moe_gen.weight")
  for key in (
    "language_model.model.embed_tokens.weight",
    "language_model.lm_head.weight",
    "language_model.model.layers.0.self_attn.q_norm_moe_gen.weight",
    "language_model.model.layers.0.mlp_moe_gen.gate_proj.weight",
    "language_model.model.layers.1.input_layernorm_moe_gen.weight",
    "language_model.model.norm_moe_gen.weight",
    "connector.fc1.weight",
    "vae2llm.weight",
    "llm2vae.bias",
    "time_embedder.mlp.0.weight",
    "time_embedder.mlp.2.bias",
    "vit_model.vision_model.encoder.layers.0.self_attn.q_proj.weight",
    "vit_model.vision_model.embeddings.patch_embedding.weight",
  ):
    assert key in keys, key
  # torch Linear layout [out, in]
  np.testing.assert_array_equal(
    q, params["decoder"]["layers"]["self_attn"]["q_proj_moe_gen"]["kernel"][1].T
  )
  assert q.shape == (config.model.llm.num_heads * config.model.llm.head_dim, hidden)
  with safe_open(str(out / "ae.safetensors"), framework="numpy") as f:
    assert "encoder.down.0.block.0.conv1.weight" in set(f.keys())
    assert "decoder.up.0.block.0.norm1.weight" in set(f.keys())


def test_roundtrip_is_exact(exported):
  config, params, vae_params, out, _ = exported
  loaded, loaded_vae = bagel.load_bagel(
    config.model, params, vae_params, str(out / "ema.safetensors"), str(out / "ae.safetensors")
  )
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(a), b)
  for a, b in zip(jax.tree_util.tree_leaves(vae_params), jax.tree_util.tree_leaves(loaded_vae)):
    np.testing.assert_array_equal(np.asarray(a), b)


def test_sharded_export_and_index(exported, tmp_path):
  config, params, vae_params, _, _ = exported
  files = core.save_safetensors(
    core.export_params(params, bagel.bagel_rules(config.model)),
    str(tmp_path / "ema.safetensors"),
    max_shard_bytes=200_000,
  )
  assert files[-1].endswith(".index.json") and len(files) > 2
  loaded = core.load_params(
    params,
    core.iter_safetensors(files[-1]),
    bagel.bagel_rules(config.model),
    ignore=bagel.BAGEL_IGNORE,
  )
  np.testing.assert_array_equal(loaded["lm_head"]["kernel"], params["lm_head"]["kernel"])


def test_problems_are_reported_by_key(exported, tmp_path):
  config, params, _, out, _ = exported
  tensors = load_file(str(out / "ema.safetensors"))
  del tensors["language_model.model.layers.1.mlp_moe_gen.up_proj.weight"]
  tensors["connector.fc2.weight"] = tensors["connector.fc2.weight"][:, :-1].copy()
  tensors["language_model.model.layers.0.self_attn.extra.weight"] = np.zeros(3, np.float32)
  tensors["latent_pos_embed.pos_embed"] = np.zeros((4, 4), np.float32)  # ignored buffer
  save_file(tensors, str(tmp_path / "bad.safetensors"))
  with pytest.raises(core.ConversionError) as info:
    core.load_params(
      params,
      core.iter_safetensors(str(tmp_path / "bad.safetensors")),
      bagel.bagel_rules(config.model),
      ignore=bagel.BAGEL_IGNORE,
    )
  message = str(info.value)
  assert "decoder/layers/mlp_moe_gen/up_proj/kernel (layers [1])" in message
  assert "connector.fc2.weight -> connector/fc2/kernel" in message
  assert "language_model.model.layers.0.self_attn.extra.weight" in message
  assert "latent_pos_embed" not in message


def test_missing_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.safetensors"):
    list(core.iter_safetensors(str(tmp_path / "nope.safetensors")))
