"""Assess-then-restore in one context: the quality description is generated in exactly the
context it was trained in (VAE condition -> ViT -> instruction -> description, the training
sequence plan), and the same KV cache, extended by the description, is the restoration
sampler's prefix. MedQ-Uni's release runs two passes (understanding, then an edit pass that
recomputes the whole context); this runs one.

Description modes: 'generated' (default; decoded with the KV cache), 'given' (the caller's
text), 'none' (the stage-1 plan without a description: the paper's ablation).
Guidance contexts (BAGEL): without the text (instruction and description dropped) and without
the images (VAE condition and ViT dropped), each prefilled once into its own cache.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from medq_jax import layout as layout_lib
from medq_jax import objectives
from medq_jax.infer import contexts, kv_cache_ops
from medq_jax.infer.decoding import DecodeSettings, DecodeStart, decode
from medq_jax.infer.sampler import SamplerSettings, euler_sample
from medq_jax.models.medq_uni import MedQUni
from medq_jax.models.vae import FluxAutoEncoder, patchify_latents, unpatchify_latents
from medq_jax.tokenizer import special_ids
from medq_jax.types import latent_dim

DESCRIPTION_MODES = ("generated", "given", "none")
NO_TEXT = ("instruction", "description")  # BAGEL's cfg_text context: the images only
NO_IMAGE = ("vae_condition", "vit")  # BAGEL's cfg_img context: the text only


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
  description_mode: str = "generated"
  decode: DecodeSettings = DecodeSettings()
  sampler: SamplerSettings = SamplerSettings()
  use_prefix_cache: bool = True  # False: recompute the whole context at every sampler step
  seed: int = 0

  def __post_init__(self):
    if self.description_mode not in DESCRIPTION_MODES:
      raise ValueError(
        f"description_mode: expected one of {DESCRIPTION_MODES}, got {self.description_mode!r}"
      )

  @classmethod
  def from_config(cls, infer_config) -> InferenceSettings:
    """From `config.infer` (see configs/medq_uni.py)."""
    c = infer_config
    return cls(
      description_mode=c.description_mode,
      decode=DecodeSettings(c.max_new_tokens, c.temperature, c.top_p),
      sampler=SamplerSettings(
        c.num_timesteps,
        c.timestep_shift,
        c.cfg_text_scale,
        c.cfg_img_scale,
        tuple(c.cfg_interval),
        c.cfg_renorm_type,
        c.cfg_renorm_min,
      ),
      use_prefix_cache=c.use_prefix_cache,
      seed=c.seed,
    )


@dataclasses.dataclass
class AssessRestoreResult:
  descriptions: list[str]
  description_ids: list[list[int]]
  truncated: np.ndarray  # [B] bool: description stopped at max_new_tokens
  restored: np.ndarray | None  # [B, S, S] float32 grey in [0, 1] (decoded image, clipped)
  restored_raw_range: tuple[float, float] | None  # min/max before the clip, for the report


def grey_to_model_rgb(images: np.ndarray, size: int) -> np.ndarray:
  """Grey [B, H, W] in [0, 1] -> [B, size, size, 3] in [-1, 1] (the layout's conversion);
  errors name the offending image index."""
  images = np.asarray(images)
  if images.ndim != 3:
    raise ValueError(f"images: expected grey [B, H, W] in [0, 1], got shape {images.shape}")
  out = []
  for index, image in enumerate(images):
    if not np.isfinite(image).all():
      raise ValueError(f"images[{index}]: contains NaN/Inf")
    low, high = float(image.min()), float(image.max())
    if low < -1e-6 or high > 1.0 + 1e-6:
      raise ValueError(f"images[{index}]: values in [{low:.3g}, {high:.3g}], expected [0, 1]")
    out.append(layout_lib.to_rgb(image, size, "image", str(index)))
  return np.stack(out)


class AssessRestore:
  """Jitted assess-then-restore for one model: call it on a batch of grey images."""

  def __init__(
    self,
    model_config,
    params: Any,
    vae_params: Any,
    tokenizer,
    spec: layout_lib.LayoutSpec,
    settings: InferenceSettings = InferenceSettings(),
  ):
    self.model_config, self.params, self.vae_params = model_config, params, vae_params
    self.tokenizer, self.spec, self.settings = tokenizer, spec, settings
    self.special = special_ids(tokenizer)
    self.model = MedQUni(model_config)
    self.vae = FluxAutoEncoder(model_config.vae)
    self.latent_dim = latent_dim(model_config)
    self.stage = 1 if settings.description_mode == "none" else 2
    self.plan = layout_lib.sequence_plan(self.stage)
    self.template = contexts.target_template(spec, self.special)
    self.capacity = spec.max_und_len + spec.tokens_per_image + settings.decode.max_new_tokens + 2
    self._jit()

  # ------------------------------------------------------------------ jitted pieces
  def _jit(self):
    model, vae, spec = self.model, self.vae, self.spec
    p = self.model_config.latent_patch_size
    side = spec.vae_image_size // spec.vae_downsample

    def encode(vae_params, images):
      latents = vae.apply({"params": vae_params}, images, method=vae.encode)
      return patchify_latents(latents, p)

    def decode_latents(vae_params, tokens):
      images = vae.apply(
        {"params": vae_params}, unpatchify_latents(tokens, side, side, p), method=vae.decode
      )
      return (jnp.mean(images, axis=-1) + 1.0) / 2.0

    def prefill(params, chunk):
      out = model.apply({"params": params}, chunk, return_kv=True)
      ids = kv_cache_ops.chunk_ids(chunk)
      return out["logits"], kv_cache_ops.cache_from_chunk(out["kv"], ids, self.capacity)

    def apply_cached(params, chunk, cache):
      return model.apply({"params": params}, chunk, cache=cache, return_kv=True)

    def generate(params, cache, first_logits, start, rng):
      return decode(
        apply_cached,
        params,
        cache,
        first_logits,
        start,
        self.special["im_end"],
        self.settings.decode,
        rng,
        self.latent_dim,
      )

    self._encode = jax.jit(encode)
    self._decode_latents = jax.jit(decode_latents)
    self._prefill = jax.jit(prefill)
    self._generate = jax.jit(generate)
    self._sample_cached = jax.jit(self._sample_with_caches)
    self._sample_uncached = jax.jit(self._sample_recomputing)

  def _velocities(self, velocity: jax.Array, count: int):
    parts = jnp.split(velocity, count, axis=0)
    return parts[0], parts[min(1, count - 1)], parts[min(2, count - 1)]

  def _sample_with_caches(self, params, cache, split, position, noise, cond_latents):
    """Euler sampling where every step reads the contexts' caches (stacked along the batch:
    full, then without text, then without images) and runs only the target's tokens.
    cond_latents: the aligned condition of every context's target tokens (stacked the same
    way; read by model.condition_injection="spatial" only)."""
    rows = noise.shape[0]
    count = cache.visible.shape[0] // rows
    target = contexts.place_target(self.template, split, position, rows * count)

    def velocity_fn(x, t):
      chunk = dict(target)
      chunk["gen_cond_latents"] = cond_latents
      chunk["gen_latents"] = jnp.tile(x, (count, 1, 1))
      chunk["gen_timesteps"] = jnp.full(chunk["gen_positions"].shape, t, jnp.float32)
      out = self.model.apply({"params": params}, chunk, cache=cache)
      return self._velocities(out["velocity"], count)

    return euler_sample(velocity_fn, noise, self.settings.sampler)

  def _sample_recomputing(self, params, full_chunks, noise):
    """The same sampler without a prefix cache: each step runs every context's whole sequence
    (context + target) through the model. For tests and the cache benchmark."""

    def velocity_fn(x, t):
      outs = []
      for chunk in full_chunks:
        chunk = dict(chunk)
        n = x.shape[1]
        chunk["gen_latents"] = chunk["gen_latents"].at[:, -n:].set(x)
        chunk["gen_timesteps"] = chunk["gen_timesteps"].at[:, -n:].set(t)
        outs.append(self.model.apply({"params": params}, chunk)["velocity"][:, -n:])
      return outs[0], outs[min(1, len(outs) - 1)], outs[min(2, len(outs) - 1)]

    return euler_sample(velocity_fn, noise, self.settings.sampler)

  # ------------------------------------------------------------------ host-side layout
  def _encode_text(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False)

  def _context_chunk(self, plan, text_ids_rows, vit_images, cond_tokens):
    rows, opens = zip(
      *(contexts.build_context_row(plan, ids, self.spec, self.special) for ids in text_ids_rows)
    )
    chunk = contexts.stack_context(rows, self.spec, self.special, vit_images, self.spec.max_und_len)
    gen_len = chunk["gen_positions"].shape[1]
    count = len(rows)
    chunk["gen_latents"] = (
      np.asarray(cond_tokens) if gen_len else np.zeros((count, 0, self.latent_dim), np.float32)
    )
    chunk["gen_timesteps"] = np.zeros((count, gen_len), np.float32)
    split = np.asarray([row.split for row in rows], np.int32)
    position = np.asarray([row.position for row in rows], np.int32)
    return chunk, split, position, opens[0]

  def _guidance_plans(self):
    sampler = self.settings.sampler
    plans = [self.plan]
    if sampler.guided:
      plans.append(layout_lib.sequence_plan(self.stage, drop=NO_TEXT))
      if sampler.uses_image_context:
        plans.append(layout_lib.sequence_plan(self.stage, drop=NO_IMAGE))
    return plans

  # ------------------------------------------------------------------ public
  def reconstruct(self, images: np.ndarray) -> np.ndarray:
    """The VAE's encode (posterior mean) -> decode of grey images [B, H, W] in [0, 1]: the
    ceiling of any restoration through this VAE. Returns [B, S, S] in [0, 1] (clipped)."""
    rgb = grey_to_model_rgb(images, self.spec.vae_image_size)
    tokens = self._encode(self.vae_params, jnp.asarray(rgb))
    return np.clip(np.asarray(self._decode_latents(self.vae_params, tokens), np.float32), 0, 1)

  def __call__(
    self,
    images: np.ndarray,
    instructions: Sequence[str],
    descriptions: Sequence[str] | None = None,
    restore: bool = True,
  ) -> AssessRestoreResult:
    """images: grey [B, H, W] in [0, 1]; one instruction per image; descriptions when the mode
    is 'given'. Returns the descriptions and restored images (None without `restore`: the
    assessment alone, e.g. MedQ-Bench answers)."""
    mode = self.settings.description_mode
    count = len(images)
    if len(instructions) != count:
      raise ValueError(f"instructions: {len(instructions)} given for {count} images")
    if mode == "given" and (descriptions is None or len(descriptions) != count):
      raise ValueError("description_mode='given' needs one description per image")
    vae_images = grey_to_model_rgb(images, self.spec.vae_image_size)
    vit_images = grey_to_model_rgb(images, self.spec.vit_image_size)
    cond_tokens = self._encode(self.vae_params, jnp.asarray(vae_images))
    instruction_ids = [self._encode_text(text) for text in instructions]
    key = jax.random.key(self.settings.seed)
    decode_key, noise_key = jax.random.split(key)

    # 1. The full context; in 'generated' mode the description is left open and decoded.
    if mode == "generated":
      desc_ids = [contexts.OPEN] * count
    elif mode == "given":
      desc_ids = [self._encode_text(text) for text in descriptions]
    else:
      desc_ids = [()] * count
    text_rows = [dict(instruction=i, description=d) for i, d in zip(instruction_ids, desc_ids)]
    chunk, split, position, open_split = self._context_chunk(
      self.plan, text_rows, vit_images, cond_tokens
    )
    logits, cache = self._prefill(self.params, chunk)
    truncated = np.zeros(count, np.bool_)
    if mode == "generated":
      last = contexts.last_token_index(chunk)
      chunk_length = chunk["und_token_ids"].shape[1] + chunk["gen_positions"].shape[1]
      first_logits = logits[jnp.arange(count), jnp.asarray(last)]
      start = DecodeStart(
        split=jnp.full((count,), open_split, jnp.int32),
        position=jnp.asarray(position),
        # after the whole prefilled chunk (und padding and the VAE condition's slots)
        slot=jnp.full((count,), chunk_length, jnp.int32),
      )
      result = self._generate(self.params, cache, first_logits, start, decode_key)
      cache, position = result.cache, np.asarray(result.next_position)
      tokens, lengths = np.asarray(result.tokens), np.asarray(result.lengths)
      desc_ids = [tokens[i, : lengths[i]].tolist() for i in range(count)]
      truncated = np.asarray(result.truncated)
      split = np.full(count, open_split + 1, np.int32)
    descriptions_out = [
      self.tokenizer.decode(ids, skip_special_tokens=True).strip() if ids else ""
      for ids in desc_ids
    ]

    if not restore:
      return AssessRestoreResult(
        descriptions_out, [list(i) for i in desc_ids], truncated, None, None
      )

    # 2. Guidance contexts and sampling.
    text_rows = [dict(instruction=i, description=d) for i, d in zip(instruction_ids, desc_ids)]
    noise = jax.random.normal(
      noise_key, (count, self.spec.tokens_per_image, self.latent_dim), jnp.float32
    )
    if self.model_config.get("flow_source", "gaussian") == "degraded":  # InDI-style flow
      noise = objectives.degraded_source(
        cond_tokens, noise, float(self.model_config.flow_source_sigma)
      )
    plans = self._guidance_plans()
    # each context's condition for the target tokens: the degraded image's latents where the
    # context holds the VAE condition, zeros where it does not (the no-image context)
    conds = [
      cond_tokens if _has_vae_condition(plan) else jnp.zeros_like(cond_tokens) for plan in plans
    ]
    if self.settings.use_prefix_cache:
      caches, splits, positions = [cache], [split], [position]
      for plan in plans[1:]:
        g_chunk, g_split, g_position, _ = self._context_chunk(
          plan, text_rows, vit_images, cond_tokens
        )
        caches.append(self._prefill(self.params, g_chunk)[1])
        splits.append(g_split)
        positions.append(g_position)
      latents = self._sample_cached(
        self.params,
        kv_cache_ops.concat_rows(caches),
        jnp.asarray(np.concatenate(splits)),
        jnp.asarray(np.concatenate(positions)),
        noise,
        jnp.concatenate(conds, axis=0),
      )
    else:
      full_chunks = []
      for plan, cond in zip(plans, conds):
        c_chunk, c_split, c_position, _ = self._context_chunk(
          plan, text_rows, vit_images, cond_tokens
        )
        target = contexts.place_target(self.template, c_split, c_position, count)
        full = {}
        for key_name, value in c_chunk.items():
          if key_name in target:
            full[key_name] = jnp.concatenate([jnp.asarray(value), target[key_name]], axis=1)
          else:
            full[key_name] = jnp.asarray(value)
        zeros = jnp.zeros((count, self.spec.tokens_per_image), jnp.float32)
        full["gen_latents"] = jnp.concatenate([full["gen_latents"], noise * 0], axis=1)
        full["gen_timesteps"] = jnp.concatenate([full["gen_timesteps"], zeros], axis=1)
        context_len = full["gen_latents"].shape[1] - self.spec.tokens_per_image
        full["gen_cond_latents"] = jnp.concatenate(
          [jnp.zeros((count, context_len, self.latent_dim), jnp.float32), cond], axis=1
        )
        full_chunks.append(full)
      latents = self._sample_uncached(self.params, tuple(full_chunks), noise)
    restored = np.asarray(self._decode_latents(self.vae_params, latents), np.float32)
    raw_range = (float(restored.min()), float(restored.max()))
    return AssessRestoreResult(
      descriptions=descriptions_out,
      description_ids=[list(ids) for ids in desc_ids],
      truncated=truncated,
      restored=np.clip(restored, 0.0, 1.0),
      restored_raw_range=raw_range,
    )


def _has_vae_condition(plan) -> bool:
  """Whether a (guidance) plan holds the clean VAE condition image."""
  return any(item.kind == "vae" and item.loss != "flow" for item in plan)


def assess(engine: AssessRestore, images, prompts) -> list[str]:
  """Generated texts for images and prompts through the assess-then-restore context (the prompt
  in the instruction slot, the answer in the description slot), without restoring."""
  if engine.settings.description_mode != "generated":
    raise ValueError("assess needs description_mode='generated'")
  return engine(images, prompts, restore=False).descriptions


def assess_then_restore(
  params,
  vae_params,
  images,
  instructions,
  *,
  model_config,
  tokenizer,
  spec,
  settings: InferenceSettings = InferenceSettings(),
  descriptions=None,
) -> AssessRestoreResult:
  """Descriptions and restored images for a batch (builds and jits an `AssessRestore`; keep one
  instance for many batches)."""
  engine = AssessRestore(model_config, params, vae_params, tokenizer, spec, settings)
  return engine(images, instructions, descriptions)
