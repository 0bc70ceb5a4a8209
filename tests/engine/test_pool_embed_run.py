"""The pool encoder from a model directory: `VitEncoder.from_run` loads the ViT as inference
loads the model (a converted directory here) and embeds with the model's own ViT params."""

import numpy as np
import pytest

from medq_jax.engine import pool_embed


@pytest.mark.slow
def test_vit_of_a_converted_model_directory(tmp_path):
  """`VitEncoder.from_run` on a converted directory (ema.safetensors, ae.safetensors and the
  tokenizer, as inference loads it) embeds with the model's own ViT params."""
  from medq_jax.convert.bagel import export_bagel
  from tests.infer.infer_testlib import tiny_setup

  converted = tmp_path / "converted"
  config, params, vae_params, _, _ = tiny_setup(converted)
  export_bagel(
    config.model,
    params,
    vae_params,
    str(converted / "ema.safetensors"),
    str(converted / "ae.safetensors"),
  )
  loaded = pool_embed.VitEncoder.from_run(config, str(converted))
  assert loaded.name == f"medq-vit:{converted}@stepNone:vit32:{config.layout.vit_image_size}px"
  images = np.random.default_rng(0).random((3, 40, 40)).astype(np.float32)
  direct = pool_embed.VitEncoder(
    config.model.vit, params["vit"], config.layout.vit_image_size, "direct"
  )
  np.testing.assert_allclose(loaded(images), direct(images), atol=1e-5)
  assert np.abs(loaded(images)[0] - loaded(images)[1]).max() > 1e-3  # images are told apart
