"""The sampler's model input is the training row: one Euler step from t=1 (x0 = eps - v) gives
exactly what the model predicts for the packer's row (`layout.pack_example`, the train step's
input) at t=1 with the same noise; so inference sees the layout and timesteps it was trained on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medq_jax import layout as layout_lib
from medq_jax.infer.assess_restore import AssessRestore, InferenceSettings, grey_to_model_rgb
from medq_jax.infer.decoding import DecodeSettings
from medq_jax.infer.sampler import SamplerSettings
from medq_jax.models.medq_uni import MedQUni
from medq_jax.models.vae import FluxAutoEncoder, patchify_latents
from medq_jax.train.step import aligned_condition
from tests.infer.infer_testlib import images, tiny_setup


@pytest.mark.parametrize("injection,source", [("bagel", "gaussian"), ("spatial", "degraded")])
def test_one_euler_step_equals_the_training_rows_prediction(tmp_path, injection, source):
  config, params, vae_params, tokenizer, spec = tiny_setup(tmp_path, condition_injection=injection)
  config.model.flow_source = source
  if injection == "spatial":  # a trained (non-zero) projection, so the condition matters
    kernel = params["cond2llm"]["kernel"]
    params["cond2llm"]["kernel"] = 0.05 * jax.random.normal(jax.random.key(3), kernel.shape)
  settings = InferenceSettings(
    description_mode="given",
    decode=DecodeSettings(max_new_tokens=4),
    sampler=SamplerSettings(num_timesteps=2, cfg_text_scale=1.0),
  )
  engine = AssessRestore(config.model, params, vae_params, tokenizer, spec, settings)
  low = images(1, seed=9)
  instruction, description = "Assess the quality of this image.", "Mild noise; usable."

  # Inference: latents after one Euler step (t: 1 -> 0) from the engine's noise.
  captured = {}
  original = engine._sample_cached

  def capture(params_, cache, split, position, noise, cond_latents):
    captured["noise"] = noise
    captured["x0"] = original(params_, cache, split, position, noise, cond_latents)
    return captured["x0"]

  engine._sample_cached = capture
  engine(low, [instruction], [description])

  # Training: the packer's row with the target noised at t=1 (x_t = eps).
  special = engine.special
  example = dict(id="x", low=low[0], high=low[0], instruction=instruction, description=description)
  row = layout_lib.pack_example(example, tokenizer, spec, special)
  batch = {k: jnp.asarray(v[None]) for k, v in row.items()}
  vae = FluxAutoEncoder(config.model.vae)
  rgb = jnp.asarray(grey_to_model_rgb(low, spec.vae_image_size))
  cond = patchify_latents(
    vae.apply({"params": vae_params}, rgb, method=vae.encode), config.model.latent_patch_size
  )
  noise = captured["noise"]
  n = noise.shape[1]
  if source == "degraded":  # the sampler starts at the degraded latents + sigma * noise
    spread = float(jnp.std(noise - cond))
    assert abs(spread - config.model.flow_source_sigma) < 0.3 * config.model.flow_source_sigma
  batch["gen_latents"] = jnp.concatenate([cond, noise], axis=1)
  # the train step's aligned condition (read by the spatial model only)
  batch["gen_cond_latents"] = aligned_condition(
    jnp.concatenate([cond, cond], axis=1), batch["gen_cond_index"], batch["gen_sample_ids"]
  )
  batch["gen_timesteps"] = jnp.concatenate([jnp.zeros((1, n)), jnp.ones((1, n))], axis=1)
  velocity = MedQUni(config.model).apply({"params": params}, batch)["velocity"][:, n:]
  np.testing.assert_allclose(
    np.asarray(captured["x0"]), np.asarray(noise - velocity), rtol=1e-4, atol=1e-4
  )
