"""config.init: the trainer starts from BAGEL-format files (ema + FLUX ae) or from transformers
Qwen2, loading straight into the parameters' shardings."""

import logging

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import Qwen2ForCausalLM

from configs import medq_uni
from medq_jax import layout as layout_lib
from medq_jax.convert import bagel, core, qwen2
from medq_jax.convert.qwen2 import gen_twins
from medq_jax.train import state as state_lib
from medq_jax.train.pretrained import load_initial_weights
from medq_jax.types import latent_dim


def test_bagel_files_load_into_sharded_params(tmp_path, placed_params):
  config = medq_uni.get_config("size=tiny,scope=all,stage=2,mesh=2x2x2")
  source, source_vae = placed_params(config, seed=1)
  host = jax.tree_util.tree_map(np.asarray, source)
  host_vae = jax.tree_util.tree_map(np.asarray, source_vae)
  bagel.export_bagel(
    config.model,
    host,
    host_vae,
    str(tmp_path / "ema.safetensors"),
    str(tmp_path / "ae.safetensors"),
  )
  fresh, fresh_vae = placed_params(config, seed=2)
  with config.unlocked():
    config.init.bagel_ema = str(tmp_path / "ema.safetensors")
    config.init.flux_ae = str(tmp_path / "ae.safetensors")
  params, vae_params = load_initial_weights(config.init, config.model, fresh, fresh_vae)
  for path, leaf in core.flatten(params).items():
    np.testing.assert_array_equal(np.asarray(leaf), core.flatten(host)[path], err_msg=path)
    assert leaf.sharding == core.flatten(fresh)[path].sharding, path
  for path, leaf in core.flatten(vae_params).items():
    np.testing.assert_array_equal(np.asarray(leaf), core.flatten(host_vae)[path], err_msg=path)


def test_qwen2_start_copies_und_into_gen_and_keeps_the_rest(tmp_path, placed_params):
  config = medq_uni.get_config("size=tiny,scope=all,stage=2,mesh=1x-1x2")
  llm = config.model.llm
  hf = Qwen2ForCausalLM(qwen2.hf_config(llm))
  hf.save_pretrained(tmp_path / "qwen2")
  fresh, fresh_vae = placed_params(config, seed=0)
  with config.unlocked():
    config.init.qwen2 = str(tmp_path / "qwen2")
  params, vae_params = load_initial_weights(config.init, config.model, fresh, fresh_vae)
  layers = params["decoder"]["layers"]
  q = hf.model.layers[1].self_attn.q_proj.weight.detach().numpy().T
  np.testing.assert_allclose(np.asarray(layers["self_attn"]["q_proj"]["kernel"][1]), q)
  np.testing.assert_allclose(np.asarray(layers["self_attn"]["q_proj_moe_gen"]["kernel"][1]), q)
  np.testing.assert_array_equal(
    np.asarray(params["decoder"]["norm_moe_gen"]["weight"]),
    np.asarray(params["decoder"]["norm"]["weight"]),
  )
  np.testing.assert_array_equal(
    np.asarray(params["connector"]["fc1"]["kernel"]),
    np.asarray(fresh["connector"]["fc1"]["kernel"]),
  )


def test_wrong_checkpoint_stops_naming_keys(tmp_path, placed_params):
  config = medq_uni.get_config("size=tiny,scope=ffn,stage=2,mesh=1x-1x1")
  other = medq_uni.get_config("size=tiny,scope=all,stage=2,mesh=1x-1x1")
  source, source_vae = placed_params(other, seed=1)
  bagel.export_bagel(
    other.model,
    jax.tree_util.tree_map(np.asarray, source),
    jax.tree_util.tree_map(np.asarray, source_vae),
    str(tmp_path / "ema.safetensors"),
    str(tmp_path / "ae.safetensors"),
  )
  fresh, fresh_vae = placed_params(config, seed=2)
  with config.unlocked():
    config.init.bagel_ema = str(tmp_path / "ema.safetensors")
  with pytest.raises(core.ConversionError, match="q_proj_moe_gen"):
    load_initial_weights(config.init, config.model, fresh, fresh_vae)


# ------------------------------------------------------------ tied Qwen2 (Qwen2.5-0.5B layout)


def _tied_qwen2(llm, path, seed=0):
  """A random tied-embedding Qwen2ForCausalLM (no lm_head.weight in its file), saved to `path`,
  with non-trivial norms and biases so that every converted tensor matters."""
  torch.manual_seed(seed)
  hf = Qwen2ForCausalLM(
    qwen2.hf_config(llm, tie_word_embeddings=True, attn_implementation="eager")
  ).eval()
  with torch.no_grad():
    for name, param in hf.named_parameters():
      if name.endswith("norm.weight"):
        param.copy_(1.0 + 0.1 * torch.randn_like(param))
      elif name.endswith("bias"):
        param.copy_(0.05 * torch.randn_like(param))
  hf.save_pretrained(path)
  return hf


def _assert_gen_is_und(params):
  flat = core.flatten(params)
  twins = gen_twins(flat)
  assert twins, "no _moe_gen parameters"
  for und, gen in twins.items():
    np.testing.assert_array_equal(np.asarray(flat[gen]), np.asarray(flat[und]), err_msg=gen)


@pytest.mark.parametrize("scope", ["all", "ffn"])
def test_tied_qwen2_start_matches_transformers_logits(tmp_path, scope, placed_params):
  config = medq_uni.get_config(f"size=tiny,scope={scope},stage=2,mesh=1x-1x2")
  hf = _tied_qwen2(config.model.llm, tmp_path / "qwen2")
  saved = load_file(tmp_path / "qwen2" / "model.safetensors")
  assert "lm_head.weight" not in saved  # what fails to load without the tie
  fresh, fresh_vae = placed_params(config, seed=0)
  with config.unlocked():
    config.init.qwen2 = str(tmp_path / "qwen2")
  params, _ = load_initial_weights(config.init, config.model, fresh, fresh_vae)
  embedding = saved["model.embed_tokens.weight"]
  np.testing.assert_array_equal(np.asarray(params["lm_head"]["kernel"]), embedding.T)
  _assert_gen_is_und(params)
  # Every placed leaf keeps its sharding; gen and und are separate buffers (the step donates).
  for path, leaf in core.flatten(params).items():
    assert leaf.sharding == core.flatten(fresh)[path].sharding, path
  flat = core.flatten(params)
  for und, gen in gen_twins(flat).items():
    pointers = [
      [shard.data.unsafe_buffer_pointer() for shard in flat[name].addressable_shards]
      for name in (und, gen)
    ]
    assert not set(pointers[0]) & set(pointers[1]), gen

  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, 2)
  model, _ = state_lib.build_models(config.model)
  tokens = np.random.default_rng(0).integers(0, config.model.llm.vocab_size, (2, 19))
  with torch.no_grad():
    expected = hf(torch.tensor(tokens)).logits.numpy()
  batch = layout_lib.text_batch(tokens, spec, latent_dim(config.model))
  host = jax.tree_util.tree_map(np.asarray, params)
  ours = np.asarray(model.apply({"params": host}, batch)["logits"])
  np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


def test_qwen2_without_qk_norm_into_a_qk_norm_model(tmp_path, placed_params):
  """Qwen2.5 has no q_norm/k_norm; a QK-norm model (base, unimedvl_7b) keeps their fresh ones and
  copies them to the gen expert, as BAGEL's from_pretrained + init_moe do."""
  config = medq_uni.get_config("size=tiny,scope=all,stage=2,mesh=1x-1x1")
  with config.unlocked():
    config.model.llm.qk_norm = True
  _tied_qwen2(config.model.llm, tmp_path / "qwen2")
  fresh, fresh_vae = placed_params(config, seed=0)
  with config.unlocked():
    config.init.qwen2 = str(tmp_path / "qwen2")
  params, _ = load_initial_weights(config.init, config.model, fresh, fresh_vae)
  attn = params["decoder"]["layers"]["self_attn"]
  for name in ("q_norm", "k_norm"):  # their fresh values (ones in a real init), gen = copies
    fresh_norm = np.asarray(fresh["decoder"]["layers"]["self_attn"][name]["weight"])
    np.testing.assert_array_equal(np.asarray(attn[name]["weight"]), fresh_norm, err_msg=name)
  saved = load_file(tmp_path / "qwen2" / "model.safetensors")
  np.testing.assert_array_equal(
    np.asarray(attn["k_proj"]["kernel"][1]), saved["model.layers.1.self_attn.k_proj.weight"].T
  )
  _assert_gen_is_und(params)


def test_tie_is_read_from_config_json_or_the_missing_head(tmp_path, placed_params):
  config = medq_uni.get_config("size=tiny,scope=ffn,stage=2,mesh=1x-1x1")
  _tied_qwen2(config.model.llm, tmp_path / "qwen2")
  tensors = load_file(tmp_path / "qwen2" / "model.safetensors")
  target_llm = core.flatten(placed_params(config, 0)[0])
  target_llm = core.unflatten(
    {
      p: v
      for p, v in target_llm.items()
      if p.startswith(("decoder/", "embed_tokens/", "lm_head/")) and "_moe_gen" not in p
    }
  )
  # A lone file (no config.json beside it) without lm_head.weight is a tied checkpoint.
  save_file(tensors, str(tmp_path / "alone.safetensors"))
  loaded = qwen2.load_und_expert(config.model, target_llm, str(tmp_path / "alone.safetensors"))
  np.testing.assert_array_equal(loaded["lm_head/kernel"], tensors["model.embed_tokens.weight"].T)
  # config.json says untied and the head is missing: a truncated checkpoint, named.
  (tmp_path / "untied").mkdir()
  save_file(tensors, str(tmp_path / "untied" / "model.safetensors"))
  (tmp_path / "untied" / "config.json").write_text('{"tie_word_embeddings": false}')
  with pytest.raises(core.ConversionError, match="lm_head/kernel"):
    qwen2.load_und_expert(config.model, target_llm, str(tmp_path / "untied"))
  # A directory without safetensors (e.g. only pytorch_model.bin): one error naming it.
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="empty: no .safetensors files"):
    qwen2.load_und_expert(config.model, target_llm, str(tmp_path / "empty"))
  # Tied with a stale lm_head.weight saved too: the embedding wins, as transformers ties it.
  (tmp_path / "stale").mkdir()
  stale = dict(tensors, **{"lm_head.weight": np.zeros((512, 64), np.float32)})
  save_file(stale, str(tmp_path / "stale" / "model.safetensors"))
  (tmp_path / "stale" / "config.json").write_text('{"tie_word_embeddings": true}')
  loaded = qwen2.load_und_expert(config.model, target_llm, str(tmp_path / "stale"))
  np.testing.assert_array_equal(loaded["lm_head/kernel"], tensors["model.embed_tokens.weight"].T)


def test_bagel_style_start_qwen2_siglip_and_flux_ae(tmp_path, caplog, placed_params):
  """config.init.qwen2 + siglip + flux_ae together: the ViT from a SigLIP one layer deeper than
  the model (BAGEL's vit_select_layer=-2 drops the last), the VAE from an ae.safetensors."""
  from transformers import SiglipVisionConfig, SiglipVisionModel

  config = medq_uni.get_config("size=tiny,scope=all,stage=2,mesh=1x-1x2")
  vit = config.model.vit
  _tied_qwen2(config.model.llm, tmp_path / "qwen2")
  torch.manual_seed(1)
  SiglipVisionModel(
    SiglipVisionConfig(
      hidden_size=vit.hidden_size,
      intermediate_size=vit.intermediate_size,
      num_hidden_layers=vit.num_layers + 1,
      num_attention_heads=vit.num_heads,
      patch_size=vit.patch_size,
      image_size=vit.image_size,
      num_channels=vit.num_channels,
      layer_norm_eps=vit.layer_norm_eps,
    )
  ).save_pretrained(tmp_path / "siglip")
  source, source_vae = placed_params(config, seed=1)
  bagel.export_bagel(
    config.model,
    jax.tree_util.tree_map(np.asarray, source),
    jax.tree_util.tree_map(np.asarray, source_vae),
    str(tmp_path / "ema.safetensors"),
    str(tmp_path / "ae.safetensors"),
  )
  fresh, fresh_vae = placed_params(config, seed=0)
  with config.unlocked():
    config.init.qwen2 = str(tmp_path / "qwen2")
    config.init.siglip = str(tmp_path / "siglip")
    config.init.flux_ae = str(tmp_path / "ae.safetensors")
  with caplog.at_level(logging.INFO):
    params, vae_params = load_initial_weights(config.init, config.model, fresh, fresh_vae)
  assert f"SigLIP layers [{vit.num_layers}] dropped" in caplog.text
  siglip = load_file(tmp_path / "siglip" / "model.safetensors")
  prefix = "vision_model." if any(k.startswith("vision_model.") for k in siglip) else ""
  layers = params["vit"]["encoder"]["layers"]
  for index in range(vit.num_layers):
    np.testing.assert_array_equal(
      np.asarray(layers["mlp"]["fc1"]["kernel"][index]),
      siglip[f"{prefix}encoder.layers.{index}.mlp.fc1.weight"].T,
    )
  np.testing.assert_array_equal(
    np.asarray(params["vit"]["post_layernorm"]["scale"]), siglip[f"{prefix}post_layernorm.weight"]
  )
  for path, leaf in core.flatten(vae_params).items():
    np.testing.assert_array_equal(
      np.asarray(leaf), np.asarray(core.flatten(source_vae)[path]), err_msg=path
    )
  # The connector and latent heads keep their fresh initialisation.
  np.testing.assert_array_equal(
    np.asarray(params["vae2llm"]["kernel"]), np.asarray(fresh["vae2llm"]["kernel"])
  )
