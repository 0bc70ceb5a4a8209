"""Shared set-up of the inference tests: a tiny random MedQUni, its VAE and a BPE tokenizer."""

import flax.linen as nn
import jax
import numpy as np

from configs import medq_uni
from medq_jax import layout as layout_lib
from medq_jax.models.medq_uni import MedQUni, init_batch
from medq_jax.models.vae import FluxAutoEncoder
from medq_jax.tokenizer import train_bpe_tokenizer

TEXTS = [
  "Assess the quality of this image, then restore it.",
  "The CT shows mild noise. Overall, the quality of this image is usable.",
  "Severe motion artefacts in the brain MRI; reject.",
] * 30


def tiny_setup(tmp_dir, scope="ffn", seed=0, condition_injection="bagel"):
  """(config, params, vae_params, tokenizer, spec) of a random tiny model."""
  config = medq_uni.get_config(f"size=tiny,stage=2,scope={scope}")
  config.model.condition_injection = condition_injection
  tokenizer = train_bpe_tokenizer(TEXTS, 300, str(tmp_dir))
  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, 2)
  key_model, key_vae, key_head = jax.random.split(jax.random.key(seed), 3)
  params = nn.unbox(
    jax.jit(MedQUni(config.model).init)(key_model, init_batch(config.model))["params"]
  )
  # llm2vae starts at zero (BAGEL); give it weights so velocities depend on the inputs.
  kernel = params["llm2vae"]["kernel"]
  params["llm2vae"]["kernel"] = 0.05 * jax.random.normal(key_head, kernel.shape, kernel.dtype)
  image = np.zeros((1, spec.vae_image_size, spec.vae_image_size, 3), np.float32)
  vae_params = nn.unbox(jax.jit(FluxAutoEncoder(config.model.vae).init)(key_vae, image)["params"])
  return config, params, vae_params, tokenizer, spec


def images(count, size=32, seed=0):
  return np.random.default_rng(seed).random((count, size, size)).astype(np.float32)
