"""Parity of the MoT decoder against transformers' PyTorch Qwen2, and expert routing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import Qwen2ForCausalLM

from configs import medq_uni
from medq_jax import layout as layout_lib
from medq_jax.convert import core, qwen2
from medq_jax.convert.bagel import init_from_pretrained
from medq_jax.models.medq_uni import MedQUni
from medq_jax.types import KIND_TEXT, latent_dim


def _config(scope="ffn"):
  config = medq_uni.get_config(f"size=tiny,scope={scope}")
  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, 2)
  return config, spec


def _init(config, spec, seed=0):
  model = MedQUni(config.model)
  batch = layout_lib.zeros_batch(spec, 1, latent_dim(config.model))
  params = jax.jit(lambda r: model.init(r, batch)["params"])(jax.random.PRNGKey(seed))
  import flax.linen as nn

  return model, jax.tree_util.tree_map(np.asarray, nn.unbox(params))


@pytest.fixture(scope="module")
def hf_qwen2(tmp_path_factory):
  config, _ = _config()
  llm = config.model.llm
  torch.manual_seed(0)
  hf_config = qwen2.hf_config(llm, max_position_embeddings=512, attn_implementation="eager")
  model = Qwen2ForCausalLM(hf_config).eval()
  # Random non-trivial norms and biases so that every converted tensor matters.
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name.endswith("norm.weight"):
        param.copy_(1.0 + 0.1 * torch.randn_like(param))
      elif name.endswith("bias"):
        param.copy_(0.05 * torch.randn_like(param))
  path = tmp_path_factory.mktemp("qwen2")
  model.save_pretrained(path, safe_serialization=True)
  return model, str(path)


def test_qwen2_logits_match_und_only_path(hf_qwen2):
  hf_model, path = hf_qwen2
  config, spec = _config("ffn")
  model, init_params = _init(config, spec)
  params = init_from_pretrained(config.model, init_params, qwen2_path=path)
  tokens = np.random.default_rng(0).integers(0, config.model.llm.vocab_size, (2, 19))
  with torch.no_grad():
    expected = hf_model(torch.tensor(tokens)).logits.numpy()
  batch = layout_lib.text_batch(tokens, spec, latent_dim(config.model))
  ours = np.asarray(model.apply({"params": params}, batch)["logits"])
  assert np.abs(ours - expected).max() <= 1e-4
  # The gen expert started as a copy of the und expert.
  np.testing.assert_array_equal(
    params["decoder"]["layers"]["mlp_moe_gen"]["up_proj"]["kernel"],
    params["decoder"]["layers"]["mlp"]["up_proj"]["kernel"],
  )


def test_missing_gen_weights_are_reported(hf_qwen2):
  _, path = hf_qwen2
  config, spec = _config("all")
  _, init_params = _init(config, spec)
  from medq_jax.convert.bagel import bagel_rules

  with pytest.raises(core.ConversionError, match="unexpected checkpoint keys"):
    core.load_params(init_params, core.iter_safetensors(path), bagel_rules(config.model))


def _mixed_batch(config, spec, rng):
  """A packed stage-2 layout with random token ids and random gen latents."""
  batch = layout_lib.zeros_batch(spec, 2, latent_dim(config.model))
  row = _layout_row(spec)
  for key, value in row.items():
    batch[key] = np.stack([value, value])
  batch["und_token_ids"] = np.where(
    batch["und_kind"] == KIND_TEXT,
    rng.integers(5, config.model.llm.vocab_size, batch["und_token_ids"].shape),
    batch["und_token_ids"],
  ).astype(np.int32)
  batch["vit_patches"] = rng.normal(size=batch["vit_patches"].shape).astype(np.float32)
  batch["gen_latents"] = rng.normal(size=batch["gen_latents"].shape).astype(np.float32)
  batch["gen_timesteps"] = np.where(batch["gen_noised"], 0.6, 0.0).astype(np.float32)
  return batch


class _CharTokenizer:
  """Deterministic stand-in for text encoding in layout tests: one id per character."""

  def encode(self, text, add_special_tokens=False):
    return [5 + (ord(c) % 400) for c in text]


def _layout_row(spec):
  rng = np.random.default_rng(1)
  example = dict(
    id="x",
    low=rng.random((32, 32)).astype(np.float32),
    high=rng.random((32, 32)).astype(np.float32),
    instruction="restore this",
    description="moderate noise. Overall, usable.",
  )
  special = dict(pad=0, im_start=1, im_end=2, vision_start=3, vision_end=4)
  return layout_lib.pack_example(example, _CharTokenizer(), spec, special)


def test_all_scope_with_copied_experts_equals_dense():
  """expert_scope='all' with gen weights = und weights gives the dense (one-expert) model."""
  config, spec = _config("all")
  model, params = _init(config, spec, seed=3)
  params = qwen2.copy_und_to_gen(params)
  batch = _mixed_batch(config, spec, np.random.default_rng(0))
  out = model.apply({"params": params}, batch)
  # Dense reference: every token in one stream through the und weights, via the decoder alone.
  bound = model.bind({"params": params})
  und_h = bound.embed_und(batch)
  gen_h = bound.embed_gen(batch)
  from medq_jax.models.attention import TokenIds
  from medq_jax.models.medq_uni import stream_ids

  ids = TokenIds.concat(stream_ids(batch, "und"), stream_ids(batch, "gen"))
  empty = TokenIds(*(jnp.zeros((2, 0), jnp.int32) for _ in range(4)))
  dense_h, _ = bound.decoder(
    jnp.concatenate([und_h, gen_h], 1),
    jnp.zeros((2, 0, und_h.shape[-1])),
    ids,
    empty,
    jnp.concatenate([batch["und_positions"], batch["gen_positions"]], 1),
    jnp.zeros((2, 0), jnp.int32),
  )
  lu = batch["und_token_ids"].shape[1]
  np.testing.assert_allclose(out["logits"], bound.lm_head(dense_h[:, :lu]), atol=1e-5)
  np.testing.assert_allclose(out["velocity"], bound.llm2vae(dense_h[:, lu:]), atol=1e-5)


@pytest.mark.parametrize("scope", ["ffn", "all"])
def test_routing_isolates_experts(scope):
  config, spec = _config(scope)
  model, params = _init(config, spec, seed=5)
  params = jax.tree_util.tree_map(np.array, params)
  # 1) perturbing gen-expert weights changes no logit of a text-only sequence.
  tokens = np.random.default_rng(0).integers(5, 500, (2, 12))
  text = layout_lib.text_batch(tokens, spec, latent_dim(config.model))
  before = model.apply({"params": params}, text)["logits"]
  perturbed = core.unflatten(
    {p: (v + 0.5 if "_moe_gen" in p else v) for p, v in core.flatten(params).items()}
  )
  after = model.apply({"params": perturbed}, text)["logits"]
  np.testing.assert_array_equal(before, after)
  # ... while it does change the velocity of a mixed sequence (the weights are live).
  mixed = _mixed_batch(config, spec, np.random.default_rng(1))
  params["llm2vae"]["kernel"] += 0.1  # zero-initialised: give the velocity head some weight
  perturbed["llm2vae"]["kernel"] = params["llm2vae"]["kernel"]
  v0 = model.apply({"params": params}, mixed)["velocity"]
  v1 = model.apply({"params": perturbed}, mixed)["velocity"]
  assert np.abs(v0 - v1).max() > 1e-3
  # 2) vice versa: perturbing und-only weights changes no velocity of a gen-only sequence.
  gen_only = dict(mixed)
  for key in [k for k in gen_only if k.startswith("und_")]:
    gen_only[key] = gen_only[key][:, :0]
  und_only = (
    (lambda p: "decoder/layers/mlp/" in p)
    if scope == "ffn"
    else (
      lambda p: (
        p.startswith("decoder/")
        and "_moe_gen" not in p
        and "norm_moe_gen" not in p
        and not p.startswith("decoder/norm_moe_gen")
      )
    )
  )
  und_perturbed = core.unflatten(
    {p: (v + 0.5 if und_only(p) else v) for p, v in core.flatten(params).items()}
  )
  g0 = model.apply({"params": params}, gen_only)["velocity"]
  g1 = model.apply({"params": und_perturbed}, gen_only)["velocity"]
  np.testing.assert_array_equal(g0, g1)
