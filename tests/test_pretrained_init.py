"""config.init: the trainer starts from BAGEL-format files (ema + FLUX ae) or from transformers
Qwen2, loading straight into the parameters' shardings."""

import jax
import numpy as np
import pytest
from transformers import Qwen2Config, Qwen2ForCausalLM

from configs import medq_uni
from medq_jax import layout as layout_lib
from medq_jax import sharding as sharding_lib
from medq_jax.convert import bagel, core
from medq_jax.train import state as state_lib
from medq_jax.train.pretrained import load_initial_weights


def _sharded(config, seed):
  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, 2)
  model, vae = state_lib.build_models(config.model)
  mesh = sharding_lib.make_mesh(config.mesh)
  params, vae_params, _, _ = state_lib.init_params_sharded(
    model, vae, spec, config.model, mesh, config.sharding_rules, jax.random.PRNGKey(seed)
  )
  return params, vae_params


def test_bagel_files_load_into_sharded_params(tmp_path):
  config = medq_uni.get_config("size=tiny,scope=all,stage=2,mesh=2x2x2")
  source, source_vae = _sharded(config, seed=1)
  host = jax.tree_util.tree_map(np.asarray, source)
  host_vae = jax.tree_util.tree_map(np.asarray, source_vae)
  bagel.export_bagel(
    config.model,
    host,
    host_vae,
    str(tmp_path / "ema.safetensors"),
    str(tmp_path / "ae.safetensors"),
  )
  fresh, fresh_vae = _sharded(config, seed=2)
  with config.unlocked():
    config.init.bagel_ema = str(tmp_path / "ema.safetensors")
    config.init.flux_ae = str(tmp_path / "ae.safetensors")
  params, vae_params = load_initial_weights(config.init, config.model, fresh, fresh_vae)
  for path, leaf in core.flatten(params).items():
    np.testing.assert_array_equal(np.asarray(leaf), core.flatten(host)[path], err_msg=path)
    assert leaf.sharding == core.flatten(fresh)[path].sharding, path
  for path, leaf in core.flatten(vae_params).items():
    np.testing.assert_array_equal(np.asarray(leaf), core.flatten(host_vae)[path], err_msg=path)


def test_qwen2_start_copies_und_into_gen_and_keeps_the_rest(tmp_path):
  config = medq_uni.get_config("size=tiny,scope=all,stage=2,mesh=1x-1x2")
  llm = config.model.llm
  hf = Qwen2ForCausalLM(
    Qwen2Config(
      vocab_size=llm.vocab_size,
      hidden_size=llm.hidden_size,
      intermediate_size=llm.intermediate_size,
      num_hidden_layers=llm.num_layers,
      num_attention_heads=llm.num_heads,
      num_key_value_heads=llm.num_kv_heads,
      tie_word_embeddings=False,
    )
  )
  hf.save_pretrained(tmp_path / "qwen2")
  fresh, fresh_vae = _sharded(config, seed=0)
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


def test_wrong_checkpoint_stops_naming_keys(tmp_path):
  config = medq_uni.get_config("size=tiny,scope=ffn,stage=2,mesh=1x-1x1")
  other = medq_uni.get_config("size=tiny,scope=all,stage=2,mesh=1x-1x1")
  source, source_vae = _sharded(other, seed=1)
  bagel.export_bagel(
    other.model,
    jax.tree_util.tree_map(np.asarray, source),
    jax.tree_util.tree_map(np.asarray, source_vae),
    str(tmp_path / "ema.safetensors"),
    str(tmp_path / "ae.safetensors"),
  )
  fresh, fresh_vae = _sharded(config, seed=2)
  with config.unlocked():
    config.init.bagel_ema = str(tmp_path / "ema.safetensors")
  with pytest.raises(core.ConversionError, match="q_proj_moe_gen"):
    load_initial_weights(config.init, config.model, fresh, fresh_vae)
