"""model.condition_injection="spatial": the clean condition added to the noised target token at
the same latent position (beside BAGEL's attention-only conditioning)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import medq_uni
from medq_jax import layout as layout_lib
from medq_jax.infer.assess_restore import AssessRestore, InferenceSettings
from medq_jax.infer.decoding import DecodeSettings
from medq_jax.infer.sampler import SamplerSettings
from medq_jax.models.medq_uni import MedQUni, init_batch
from medq_jax.train.step import aligned_condition
from tests.infer.infer_testlib import images, tiny_setup
from tests.models.test_layout import SPECIAL, _CharTokenizer, _example

INSTRUCTIONS = ["Assess the quality of this image, then restore it."] * 2


def _brute_force_index(row):
  """For each noised token, the nearest earlier clean token with the same latent position."""
  out = []
  for i, noised in enumerate(row["gen_noised"]):
    match = [
      j
      for j in range(i)
      if noised
      and not row["gen_noised"][j]
      and row["gen_latent_pos"][j] == row["gen_latent_pos"][i]
    ]
    out.append(match[-1] if match else -1)
  return np.asarray(out)


@pytest.mark.parametrize("dropped", [(), ("vae_condition",), ("vit",)])
def test_condition_index_matches_brute_force(dropped):
  config = medq_uni.get_config("size=tiny,stage=2")
  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, 2)
  row = layout_lib.pack_example(
    _example(np.random.default_rng(0)), _CharTokenizer(), spec, SPECIAL, dropped=dropped
  )
  index = row["gen_cond_index"]
  np.testing.assert_array_equal(index, _brute_force_index(row))
  # static layout [condition, target]: target token i + n reads the condition slot's token i,
  # also when the condition was dropped (the slot is padding; consumers check its sample id)
  n = spec.tokens_per_image
  np.testing.assert_array_equal(index, np.r_[np.full(n, -1), np.arange(n)])
  dropped_slot = row["gen_sample_ids"][index[n:]] == layout_lib.PAD_SAMPLE
  assert dropped_slot.all() == ("vae_condition" in dropped)


def test_aligned_condition_gathers_and_zeros():
  rng = np.random.default_rng(1)
  x0 = rng.normal(size=(2, 6, 3)).astype(np.float32)
  index = np.array([[-1, -1, -1, 0, 1, 2], [-1, -1, -1, 0, 1, 2]], np.int32)
  sample_ids = np.array([[0, 0, 0, 0, 0, 0], [layout_lib.PAD_SAMPLE] * 3 + [0] * 3], np.int32)
  expected = np.zeros_like(x0)
  expected[:, 3:] = x0[:, :3]
  # without sample ids: the degraded image's latents (the flow source), dropped or not
  out = np.asarray(aligned_condition(jnp.asarray(x0), jnp.asarray(index)))
  np.testing.assert_array_equal(out, expected)
  # with sample ids: zeros where the condition slot is padding (a dropped condition)
  expected[1] = 0.0
  out = aligned_condition(jnp.asarray(x0), jnp.asarray(index), jnp.asarray(sample_ids))
  np.testing.assert_array_equal(np.asarray(out), expected)


def _spatial_config():
  config = medq_uni.get_config("size=tiny,stage=2")
  config.model.condition_injection = "spatial"
  return config


def test_zero_initialised_projection_leaves_bagel_outputs():
  """A fresh spatial model is exactly the BAGEL model with the same other parameters."""
  spatial, bagel = _spatial_config(), medq_uni.get_config("size=tiny,stage=2")
  batch = init_batch(spatial.model)
  rng = np.random.default_rng(2)
  batch = dict(batch)
  batch["gen_latents"] = jnp.asarray(rng.normal(size=batch["gen_latents"].shape), jnp.float32)
  batch["gen_cond_latents"] = jnp.asarray(rng.normal(size=batch["gen_latents"].shape), jnp.float32)
  params = nn.unbox(jax.jit(MedQUni(spatial.model).init)(jax.random.key(0), batch)["params"])
  assert not np.asarray(params["cond2llm"]["kernel"]).any()
  kernel = params["llm2vae"]["kernel"]
  params["llm2vae"]["kernel"] = 0.05 * jax.random.normal(jax.random.key(1), kernel.shape)
  bagel_params = {k: v for k, v in params.items() if k != "cond2llm"}
  apply_s, apply_b = jax.jit(MedQUni(spatial.model).apply), jax.jit(MedQUni(bagel.model).apply)
  out_s = apply_s({"params": params}, batch)["velocity"]
  out_b = apply_b({"params": bagel_params}, batch)["velocity"]
  np.testing.assert_array_equal(np.asarray(out_s), np.asarray(out_b))
  # with a trained (non-zero) projection the condition changes the velocity
  params["cond2llm"]["kernel"] = 0.05 * jnp.ones_like(params["cond2llm"]["kernel"])
  out_t = apply_s({"params": params}, batch)["velocity"]
  assert np.abs(np.asarray(out_t) - np.asarray(out_s)).max() > 1e-3


def test_unknown_injection_is_one_clear_error():
  config = _spatial_config()
  config.model.condition_injection = "concat"
  with pytest.raises(ValueError, match="model.condition_injection"):
    MedQUni(config.model).init(jax.random.key(0), init_batch(config.model))


@pytest.fixture(scope="module")
def spatial_setup(tmp_path_factory):
  config, params, vae_params, tokenizer, spec = tiny_setup(
    tmp_path_factory.mktemp("tok"), condition_injection="spatial"
  )
  kernel = params["cond2llm"]["kernel"]
  params["cond2llm"]["kernel"] = 0.05 * jax.random.normal(jax.random.key(7), kernel.shape)
  return config, params, vae_params, tokenizer, spec


def _run(setup, **overrides):
  config, params, vae_params, tokenizer, spec = setup
  settings = InferenceSettings(
    decode=DecodeSettings(max_new_tokens=4), sampler=SamplerSettings(num_timesteps=3)
  )
  settings = dataclasses.replace(settings, **overrides)
  engine = AssessRestore(config.model, params, vae_params, tokenizer, spec, settings)
  return engine(images(2, seed=3), INSTRUCTIONS)


def test_prefix_cache_equals_recomputation_spatial(spatial_setup):
  cached = _run(spatial_setup)
  recomputed = _run(spatial_setup, use_prefix_cache=False)
  assert cached.descriptions == recomputed.descriptions
  np.testing.assert_allclose(cached.restored, recomputed.restored, atol=2e-5)


def test_sampler_reads_the_spatial_condition(spatial_setup):
  """Zeroing the projection (keeping everything else) changes the restoration."""
  config, params, vae_params, tokenizer, spec = spatial_setup
  settings = InferenceSettings(
    decode=DecodeSettings(max_new_tokens=4), sampler=SamplerSettings(num_timesteps=3)
  )
  engine = AssessRestore(config.model, params, vae_params, tokenizer, spec, settings)
  with_cond = engine(images(2, seed=3), INSTRUCTIONS)
  # the jitted functions take the parameters as arguments: swapping them does not recompile
  engine.params = dict(params, cond2llm=jax.tree_util.tree_map(jnp.zeros_like, params["cond2llm"]))
  without = engine(images(2, seed=3), INSTRUCTIONS)
  assert np.abs(with_cond.restored - without.restored).max() > 1e-3


# ---------------------------------------------------------------- model.flow_source="degraded"
def test_untrained_degraded_flow_returns_the_vae_reconstruction_of_the_input(tmp_path):
  """With the flow starting at the degraded latents (sigma 0) and a fresh model (llm2vae is
  zero: velocity 0), every Euler step stays put: the restoration is the VAE's reconstruction of
  the degraded input, the identity through the VAE."""
  config, params, vae_params, tokenizer, spec = tiny_setup(tmp_path, condition_injection="spatial")
  config.model.flow_source, config.model.flow_source_sigma = "degraded", 0.0
  params["llm2vae"] = jax.tree_util.tree_map(jnp.zeros_like, params["llm2vae"])
  settings = InferenceSettings(
    decode=DecodeSettings(max_new_tokens=2), sampler=SamplerSettings(num_timesteps=3)
  )
  engine = AssessRestore(config.model, params, vae_params, tokenizer, spec, settings)
  degraded = images(2, seed=5)
  out = engine(degraded, INSTRUCTIONS)
  np.testing.assert_allclose(out.restored, engine.reconstruct(degraded), atol=1e-5)


def test_degraded_flow_loss_targets_the_degraded_minus_clean_latents():
  """rf loss of a zero-velocity model = mean over target tokens of |cond - target|^2 latents
  (sigma 0, posterior mean), the velocity v = source - x0 of a flow from the degraded image."""
  from medq_jax.models.vae import patchify_latents
  from medq_jax.train import state as state_lib
  from medq_jax.train import step as step_lib

  config = _spatial_config()
  config.model.flow_source, config.model.flow_source_sigma = "degraded", 0.0
  config.train.update(alpha_l1=0.0, beta_ssim=0.0, sample_vae_posterior=False, stage=1)
  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, 1)
  model, vae = state_lib.build_models(config.model)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), init_batch(config.model))["params"])
  image = jnp.zeros((1, spec.vae_image_size, spec.vae_image_size, 3), jnp.float32)
  vae_params = nn.unbox(jax.jit(vae.init)(jax.random.key(1), image)["params"])
  row = layout_lib.pack_example(
    _example(np.random.default_rng(3)), _CharTokenizer(), spec, SPECIAL, plan=None
  )
  batch = {k: jnp.asarray(v)[None] for k, v in row.items()}
  loss_fn = step_lib.make_loss_fn(model, vae, config.model, config.train)
  _, metrics = jax.jit(loss_fn)(params, vae_params, batch, jax.random.key(2))
  latents = vae.apply({"params": vae_params}, batch["vae_images"][0], None, method=vae.encode)
  tokens = np.asarray(patchify_latents(latents, config.model.latent_patch_size))
  expected = np.mean((tokens[0] - tokens[1]) ** 2)
  np.testing.assert_allclose(float(metrics["loss_rf"]), expected, rtol=1e-5)


def test_unknown_flow_source_is_one_clear_error():
  config = _spatial_config()
  config.model.flow_source = "uniform"
  with pytest.raises(ValueError, match="model.flow_source"):
    MedQUni(config.model).init(jax.random.key(0), init_batch(config.model))
