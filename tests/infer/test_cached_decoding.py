"""KV-cached description decoding equals full recomputation token by token, for a batch of rows
with different context lengths; sampling settings behave as documented."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medq_jax.infer import contexts
from medq_jax.infer.assess_restore import AssessRestore, InferenceSettings
from medq_jax.infer.decoding import DecodeSettings
from medq_jax.infer.sampler import SamplerSettings
from medq_jax.infer.token_sampling import choose_tokens, top_p_filter
from tests.infer.infer_testlib import images, tiny_setup

INSTRUCTIONS = [
  "Assess the quality of this image, then restore it.",
  "Assess the quality.",
  "Severe motion artefacts in the brain MRI; reject. Assess the quality of this image.",
]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
  config, params, vae_params, tokenizer, spec = tiny_setup(tmp_path_factory.mktemp("tok"))
  settings = InferenceSettings(
    decode=DecodeSettings(max_new_tokens=7), sampler=SamplerSettings(num_timesteps=3)
  )
  return AssessRestore(config.model, params, vae_params, tokenizer, spec, settings)


def _recomputed_greedy(engine, image_batch, max_new):
  """Greedy decoding by running the whole context again for every new token (no cache)."""
  from medq_jax.infer.assess_restore import grey_to_model_rgb

  vae_images = grey_to_model_rgb(image_batch, engine.spec.vae_image_size)
  vit_images = grey_to_model_rgb(image_batch, engine.spec.vit_image_size)
  cond = engine._encode(engine.vae_params, jnp.asarray(vae_images))
  out = []
  for row_index, instruction in enumerate(INSTRUCTIONS):
    ids = []
    instruction_ids = engine._encode_text(instruction)
    while len(ids) < max_new:
      text_rows = [dict(instruction=instruction_ids, description=ids)]
      chunk, *_ = engine._context_chunk(
        engine.plan,
        text_rows,
        vit_images[row_index : row_index + 1],
        cond[row_index : row_index + 1],
      )
      logits, _ = engine._prefill(engine.params, chunk)
      index = contexts.last_token_index(chunk)[0] - 1  # the token before the closing im_end
      token = int(jnp.argmax(logits[0, index]))
      if token == engine.special["im_end"]:
        break
      ids.append(token)
    out.append(ids)
  return out


def test_cached_decoding_equals_recomputation(engine):
  batch = images(3, seed=4)
  result = engine(batch, INSTRUCTIONS)
  reference = _recomputed_greedy(engine, batch, engine.settings.decode.max_new_tokens)
  assert result.description_ids == reference
  assert any(len(ids) > 0 for ids in reference)
  for ids, truncated in zip(result.description_ids, result.truncated):
    assert truncated == (len(ids) == engine.settings.decode.max_new_tokens)


def test_rows_do_not_interact(engine):
  """A row's description does not depend on which other rows share its batch."""
  batch = images(3, seed=5)
  together = engine(batch, INSTRUCTIONS).description_ids
  alone = engine(batch[1:2], INSTRUCTIONS[1:2]).description_ids
  assert together[1] == alone[0]


def test_top_p_filter_matches_numpy():
  logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05], [0.05, 0.05, 0.1, 0.8]], np.float32))
  kept = np.isfinite(np.asarray(top_p_filter(jnp.asarray(logits), 0.7)))
  # NumPy reference: the smallest prefix of the sorted distribution whose mass reaches 0.7.
  expected = np.zeros_like(kept)
  for row, p in enumerate(np.exp(logits)):
    order = np.argsort(-p)
    mass = 0.0
    for index in order:
      expected[row, index] = True
      mass += p[index]
      if mass >= 0.7:
        break
  np.testing.assert_array_equal(kept, expected)


def test_sampling_follows_the_distribution():
  logits = jnp.log(jnp.asarray([[0.6, 0.3, 0.1]] * 4000, jnp.float32))
  tokens = np.asarray(choose_tokens(logits, jax.random.key(0), temperature=1.0))
  np.testing.assert_allclose(np.bincount(tokens, minlength=3) / 4000, [0.6, 0.3, 0.1], atol=0.03)
  greedy = np.asarray(choose_tokens(logits, jax.random.key(0), temperature=0.0))
  assert (greedy == 0).all()
  nucleus = np.asarray(choose_tokens(logits, jax.random.key(1), temperature=1.0, top_p=0.5))
  assert (nucleus == 0).all()


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
  ],
)
def test_bad_decode_settings(kwargs, message):
  with pytest.raises(ValueError, match=message):
    DecodeSettings(**kwargs)


def test_decoding_past_the_context_padding_keeps_the_vae_condition(tmp_path):
  """Context + generated tokens longer than layout.max_und_len: decoding writes after the VAE
  condition's cache slots, never over them (the reference recomputes in a wider layout)."""
  import dataclasses

  config, params, vae_params, tokenizer, spec = tiny_setup(tmp_path)
  long_instruction = " ".join(["Assess the quality of this image, then restore it."] * 13)
  settings = InferenceSettings(
    decode=DecodeSettings(max_new_tokens=100), sampler=SamplerSettings(num_timesteps=2)
  )
  engine = AssessRestore(config.model, params, vae_params, tokenizer, spec, settings)
  context_len = len(engine._encode_text(long_instruction)) + spec.num_vit_tokens + 8
  assert context_len < spec.max_und_len
  wide = AssessRestore(
    config.model,
    params,
    vae_params,
    tokenizer,
    dataclasses.replace(spec, max_und_len=spec.max_und_len + 128),
    settings,
  )
  global INSTRUCTIONS
  saved, INSTRUCTIONS = INSTRUCTIONS, [long_instruction]
  try:
    batch = images(1, seed=6)
    reference = _recomputed_greedy(wide, batch, 100)
  finally:
    INSTRUCTIONS = saved
  assert context_len + len(reference[0]) > spec.max_und_len + 40  # the overflow is exercised
  assert engine(batch, [long_instruction], restore=False).description_ids == reference
