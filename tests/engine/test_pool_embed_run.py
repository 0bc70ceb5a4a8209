"""The pool encoder from a model directory: `VitEncoder.from_run` loads the ViT as inference
loads the model (a converted directory here) and embeds with the model's own ViT params."""

import flax.linen as nn
import jax
import numpy as np

from configs import medq_uni
from medq_jax.convert.bagel import export_bagel
from medq_jax.engine import pool_embed
from medq_jax.models.medq_uni import MedQUni, init_batch
from medq_jax.models.vae import FluxAutoEncoder
from medq_jax.tokenizer import train_bpe_tokenizer


def _random_params(module, *init_args, seed):
  """Seeded random parameters in `module`'s shapes (traced, not compiled: seconds on CPU)."""
  shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *init_args)["params"])
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
    lambda s: (0.05 * rng.standard_normal(s.shape)).astype(s.dtype), shapes
  )


def test_vit_of_a_converted_model_directory(tmp_path):
  """`VitEncoder.from_run` on a converted directory (ema.safetensors, ae.safetensors and the
  tokenizer, as inference loads it) embeds with the model's own ViT params."""
  config = medq_uni.get_config("size=tiny,stage=2")
  params = _random_params(MedQUni(config.model), init_batch(config.model), seed=0)
  image = np.zeros((1, 32, 32, 3), np.float32)
  vae_params = _random_params(FluxAutoEncoder(config.model.vae), image, seed=1)
  converted = tmp_path / "converted"
  converted.mkdir()
  train_bpe_tokenizer(["an image of low quality"] * 20, 300, str(converted))
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
