"""MedQUni as a MedQ-Bench `BenchModel`, on the assess-then-restore engine.

Everything is read in the context the description was trained in (the training plan): VAE
condition -> ViT -> the prompt in the instruction slot -> the answer in the description slot.
- perception: the answer is generated from the MCQ prompt (KV-cached, `assess`) and its letter
  extracted by the scorer's extractor, as VLMEvalKit's models answer; option log-likelihoods
  (one forward, each option in the description slot) are an extra score;
- `describe`: `assess` on the prompt;
- `compare`: both images' plan items (VAE condition, ViT), then the prompt, then the answer,
  prefilled and decoded with the same KV-cached loop (the model never saw two images in
  training; with one image this context is `describe`'s).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from medq_jax import layout as layout_lib
from medq_jax.infer import contexts, kv_cache_ops
from medq_jax.infer.assess_restore import (
  AssessRestore,
  InferenceSettings,
  assess,
  grey_to_model_rgb,
)
from medq_jax.infer.decoding import DecodeStart
from medq_jax.infer.loading import load_for_inference
from medq_jax.models.medq_uni import MedQUni

OPTION_ROWS = 4  # option batches are padded to a multiple of this: one compilation for 2-4


def grey01(image: np.ndarray) -> np.ndarray:
  """uint8/float [H, W] or [H, W, C] -> float32 [H, W] in [0, 1]."""
  image = np.asarray(image)
  if image.ndim == 3:
    image = image[..., :3].mean(axis=-1)
  if image.ndim != 2:
    raise ValueError(f"image: expected [H, W] or [H, W, C], got shape {image.shape}")
  image = image.astype(np.float32)
  if image.max() > 1.0:
    image = image / 255.0
  return np.clip(image, 0.0, 1.0)


def _option_log_likelihoods(model, params, chunk, targets):
  """[B] sum over positions with targets >= 0 of log P(target | tokens up to that position)."""
  logits = model.apply({"params": params}, chunk)["logits"]
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(log_probs, jnp.maximum(targets, 0)[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(targets >= 0, picked, 0.0), axis=-1)


class MedQUniBenchModel:
  """Adapter from (config, params, VAE params, tokenizer) to the `BenchModel` protocol, with
  `answer` (generated MCQ answers). Descriptions and comparisons decode up to
  `max_new_tokens`, answers up to `answer_max_new_tokens` (one engine per budget, built lazily).
  """

  def __init__(
    self,
    config,
    params: Any,
    vae_params: Any,
    tokenizer,
    settings: InferenceSettings | None = None,
    answer_max_new_tokens: int = 32,
  ):
    if settings is None:
      infer = config.get("infer")
      settings = InferenceSettings.from_config(infer) if infer else InferenceSettings()
    self.config, self.params, self.vae_params, self.tokenizer = (
      config,
      params,
      vae_params,
      tokenizer,
    )
    self.settings = dataclasses.replace(settings, description_mode="generated")
    self.spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, 2)
    self.max_new_tokens = self.settings.decode.max_new_tokens
    self.answer_max_new_tokens = answer_max_new_tokens
    self._engines: dict[int, AssessRestore] = {}
    self._samplers: dict[tuple[float, int], AssessRestore] = {}
    self.sample_temperature = 1.0  # describe_samples' default (MedQ-Engine sets its own)
    model = MedQUni(config.model)
    self._scores = jax.jit(
      lambda p, chunk, targets: _option_log_likelihoods(model, p, chunk, targets)
    )

    def prefill(params, chunk, capacity):
      out = model.apply({"params": params}, chunk, return_kv=True)
      cache = kv_cache_ops.cache_from_chunk(out["kv"], kv_cache_ops.chunk_ids(chunk), capacity)
      return out["logits"], cache

    self._prefill = jax.jit(prefill, static_argnums=2)

  def engine(self, max_new_tokens: int | None = None) -> AssessRestore:
    """The assess-then-restore engine decoding up to `max_new_tokens` (default: descriptions')."""
    budget = max_new_tokens or self.max_new_tokens
    if budget not in self._engines:
      decode = dataclasses.replace(self.settings.decode, max_new_tokens=budget)
      self._engines[budget] = self._engine_decoding(decode)
    return self._engines[budget]

  def _engine_decoding(self, decode) -> AssessRestore:
    """An assess-then-restore engine of this model with other decode settings."""
    return AssessRestore(
      self.config.model,
      self.params,
      self.vae_params,
      self.tokenizer,
      self.spec,
      dataclasses.replace(self.settings, decode=decode),
    )

  # --------------------------------------------------------------------------- protocol
  def answer(self, image: np.ndarray, prompt: str) -> str:
    """The generated answer to an MCQ prompt (VLMEvalKit's way; the caller extracts the letter)."""
    return assess(self.engine(self.answer_max_new_tokens), grey01(image)[None], [prompt])[0]

  def describe(self, image: np.ndarray, prompt: str) -> str:
    return assess(self.engine(), grey01(image)[None], [prompt])[0]

  def describe_samples(
    self, image: np.ndarray, prompt: str, runs: int, seed: int, temperature: float | None = None
  ) -> list[str]:
    """`runs` descriptions of one image sampled at `temperature` (default
    `self.sample_temperature`, 1.0) and top-p from the settings, drawn together as one batch
    from `seed`: MedQ-Engine's R sampled runs."""
    if runs < 1:
      raise ValueError(f"describe_samples: runs must be >= 1, got {runs}")
    temperature = self.sample_temperature if temperature is None else float(temperature)
    if temperature <= 0:
      raise ValueError(f"describe_samples: temperature must be > 0, got {temperature}")
    key = (temperature, self.max_new_tokens)
    if key not in self._samplers:
      decode = dataclasses.replace(self.settings.decode, temperature=temperature)
      self._samplers[key] = self._engine_decoding(decode)
    engine = self._samplers[key]
    # the seed is read when called, not traced: one compiled engine serves every seed
    engine.settings = dataclasses.replace(engine.settings, seed=int(seed))
    return assess(engine, np.repeat(grey01(image)[None], runs, axis=0), [prompt] * runs)

  def option_log_likelihoods(
    self, image: np.ndarray, question: str, options: list[str]
  ) -> np.ndarray:
    """[n_options] sum of log P(option tokens, <|im_end|> | VAE(image), ViT(image), question)
    with the question in the instruction slot and the option in the description slot (the
    context `answer` decodes in); all options in one forward."""
    if not options:
      raise ValueError("option_log_likelihoods: no options given")
    engine = self.engine()
    grey = grey01(image)[None]
    cond = engine._encode(
      self.vae_params, jnp.asarray(grey_to_model_rgb(grey, self.spec.vae_image_size))
    )
    vit = grey_to_model_rgb(grey, self.spec.vit_image_size)
    question_ids = engine._encode_text(question)
    option_ids = [engine._encode_text(option) for option in options]
    rows = -(-len(options) // OPTION_ROWS) * OPTION_ROWS
    padded = option_ids + [option_ids[0]] * (rows - len(options))
    chunk, *_ = engine._context_chunk(
      engine.plan,
      [dict(instruction=question_ids, description=ids) for ids in padded],
      np.repeat(vit, rows, axis=0),
      np.repeat(np.asarray(cond), rows, axis=0),
    )
    # The description is the last context item: its tokens end at each row's last real token
    # (<|im_end|>); token k is predicted by the logits at k - 1.
    last = contexts.last_token_index(chunk)
    targets = np.full(chunk["und_token_ids"].shape, -1, np.int32)
    for row, ids in enumerate(padded):
      first = last[row] - len(ids)  # the first option token (or <|im_end|> for an empty one)
      targets[row, first - 1 : last[row]] = chunk["und_token_ids"][row, first : last[row] + 1]
    scores = self._scores(self.params, chunk, jnp.asarray(targets))
    return np.asarray(scores, np.float64)[: len(options)]

  def compare(self, image_a: np.ndarray, image_b: np.ndarray, prompt: str) -> str:
    return self.generate_for_images([image_a, image_b], prompt)

  # --------------------------------------------------------------------------- several images
  def images_context(self, images: Sequence[np.ndarray], prompt: str):
    """(chunk, open split, next RoPE position) of the context: for each image its VAE condition
    and ViT items, then <|im_start|> prompt <|im_end|>, then an open <|im_start|>."""
    engine, spec, special = self.engine(), self.spec, self.engine().special
    greys = [grey01(image)[None] for image in images]
    vae_rgb = np.concatenate([grey_to_model_rgb(g, spec.vae_image_size) for g in greys])
    vit_rgb = np.concatenate([grey_to_model_rgb(g, spec.vit_image_size) for g in greys])
    cond = np.asarray(engine._encode(self.vae_params, jnp.asarray(vae_rgb)))
    row = layout_lib.RowBuilder()
    markers = special["vision_start"], special["vision_end"]
    for index in range(len(images)):
      row.vae_image(index, spec.latent_side, spec.max_latent_size, False, *markers)
      row.vit_image(spec.num_vit_tokens, *markers, first_index=index * spec.num_vit_tokens)
    row.text([special["im_start"], *engine._encode_text(prompt), special["im_end"]], loss=False)
    open_split = row.split
    row.text([special["im_start"]], loss=False)
    chunk = contexts.stack_context([row], spec, special, None, spec.max_und_len)
    patches = [
      layout_lib.image_to_vit_patches(image, spec.vit_patch_size, spec.vit_grid_side)
      for image in vit_rgb
    ]
    chunk["vit_patches"] = np.stack([p for p, _ in patches])[None]
    chunk["vit_position_ids"] = np.stack([i for _, i in patches])[None]
    chunk["vit_valid"] = np.ones(chunk["vit_position_ids"].shape, np.bool_)
    chunk["gen_latents"] = cond.reshape(1, -1, cond.shape[-1])
    chunk["gen_timesteps"] = np.zeros(chunk["gen_positions"].shape, np.float32)
    return chunk, open_split, row.position

  def generate_for_images(self, images: Sequence[np.ndarray], prompt: str) -> str:
    """Greedy (per the settings) answer for several images and a prompt: one prefill of
    `images_context`, then the engine's KV-cached decoding loop."""
    engine = self.engine()
    chunk, open_split, position = self.images_context(images, prompt)
    length = chunk["und_token_ids"].shape[1] + chunk["gen_positions"].shape[1]
    capacity = length + engine.settings.decode.max_new_tokens + 2
    logits, cache = self._prefill(self.params, chunk, capacity)
    last = int(contexts.last_token_index(chunk)[0])
    # New tokens go after the whole chunk (und padding and gen tokens), never over them.
    start = DecodeStart(
      split=jnp.asarray([open_split], jnp.int32),
      position=jnp.asarray([position], jnp.int32),
      slot=jnp.asarray([length], jnp.int32),
    )
    key = jax.random.key(self.settings.seed)
    result = engine._generate(self.params, cache, logits[:, last], start, key)
    ids = np.asarray(result.tokens)[0, : int(result.lengths[0])].tolist()
    return self.tokenizer.decode(ids, skip_special_tokens=True).strip() if ids else ""


def load_from_workdir(workdir: str, config, dtype: str | None = None) -> MedQUniBenchModel:
  """A trained model as a BenchModel: a medq-train run or pipeline directory (latest checkpoint,
  parameters only; its tokenizer; the VAE from `config.init.flux_ae` -- a file or "builtin" --
  or the pipeline's stage-0 vae/), or a converted directory. A missing VAE fails naming what was
  looked for."""
  loaded = load_for_inference(config, workdir, dtype)
  return MedQUniBenchModel(config, loaded.params, loaded.vae_params, loaded.tokenizer)
