"""Changing a noised target's tokens changes no output before it (full model, stage-2 row)."""

import flax.linen as nn
import jax
import numpy as np

from configs import medq_uni
from medq_jax import layout as layout_lib
from medq_jax.models.medq_uni import MedQUni
from medq_jax.types import latent_dim


class _CharTokenizer:
  def encode(self, text, add_special_tokens=False):
    return [5 + (ord(c) % 400) for c in text]


def test_noised_target_is_invisible_to_earlier_tokens():
  config = medq_uni.get_config("size=tiny,stage=2,scope=all")
  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, 2)
  rng = np.random.default_rng(0)
  example = dict(
    id="x",
    low=rng.random((32, 32)).astype(np.float32),
    high=rng.random((32, 32)).astype(np.float32),
    instruction="restore",
    description="mild noise. Overall, good.",
  )
  special = dict(pad=0, im_start=1, im_end=2, vision_start=3, vision_end=4)
  batch = layout_lib.collate([layout_lib.pack_example(example, _CharTokenizer(), spec, special)])
  channels = latent_dim(config.model)
  batch["gen_latents"] = rng.normal(size=(1, spec.gen_len, channels)).astype(np.float32)
  batch["gen_timesteps"] = np.where(batch["gen_noised"], 0.7, 0.0).astype(np.float32)
  model = MedQUni(config.model)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), batch)["params"])
  params["llm2vae"]["kernel"] = 0.05 * np.ones_like(params["llm2vae"]["kernel"])
  apply = jax.jit(lambda b: model.apply({"params": params}, b))
  before = apply(batch)
  changed = dict(batch)
  noised = batch["gen_noised"][..., None]
  changed["gen_latents"] = np.where(noised, batch["gen_latents"] + 3.0, batch["gen_latents"])
  after = apply(changed)
  # Every und token outside the target's split (instruction, ViT, condition markers,
  # description) and every clean-condition latent precedes the noised target: none of their
  # outputs may change. Only the target's own <|vision_start|>/<|vision_end|> markers may.
  from medq_jax.types import SPLIT_NOISE

  outside = batch["und_split_modes"][0] != SPLIT_NOISE
  assert outside.sum() > 20 and (~outside).sum() == 2
  np.testing.assert_array_equal(before["logits"][0, outside], after["logits"][0, outside])
  clean = ~batch["gen_noised"][0]
  np.testing.assert_array_equal(before["velocity"][0, clean], after["velocity"][0, clean])
  # The noised target's own outputs do change.
  assert np.abs(before["velocity"][0, ~clean] - after["velocity"][0, ~clean]).max() > 1e-4
