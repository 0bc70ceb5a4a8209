"""MedQUni: the unified assess-then-restore model (BAGEL layout) in Flax linen.

It embeds a layout batch (fields in `medq_jax.types`, built by `medq_jax.layout`) into two dense streams -- und: text tokens and
ViT tokens; gen: VAE-latent tokens -- runs the MoT decoder once, and returns text logits for the
und stream and velocity predictions for the gen stream. The frozen VAE lives outside this module
(`medq_jax.models.vae`): the caller encodes images to latent tokens and noises them, so that the
trainable parameter tree holds only what training updates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from medq_jax.models.attention import TokenIds
from medq_jax.models.decoder import MoTDecoder
from medq_jax.models.embedders import FixedPositionEmbedding, MLPConnector, TimestepEmbedder
from medq_jax.models.kv_cache import DecoderCache
from medq_jax.models.layers import constrain, dtype_of, logical_dense
from medq_jax.models.vit import SiglipVisionEncoder
from medq_jax.types import BATCH_FIELDS, KIND_VIT, MODEL_INPUT_FIELDS, field_shapes, latent_dim

Batch = Mapping[str, jax.Array]
CONDITION_INJECTIONS = ("bagel", "spatial")
FLOW_SOURCES = ("gaussian", "degraded")


def stream_ids(batch: Batch, prefix: str) -> TokenIds:
  """The mask ids of one stream ('und' or 'gen') from a layout batch."""
  return TokenIds(
    sample=batch[f"{prefix}_sample_ids"],
    split=batch[f"{prefix}_split_ids"],
    mode=batch[f"{prefix}_split_modes"],
    order=batch[f"{prefix}_positions"],
  )


class MedQUni(nn.Module):
  """Unified model. `config` is `config.model` (see configs/model_sizes.py)."""

  config: ml_collections.ConfigDict

  def setup(self):
    cfg = self.config
    llm = cfg.llm
    self.dtype = dtype_of(cfg.dtype)
    self.param_dtype = dtype_of(cfg.param_dtype)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embed_tokens = nn.Embed(
      llm.vocab_size,
      llm.hidden_size,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
    )
    self.vit = SiglipVisionEncoder(
      cfg.vit,
      scan_layers=cfg.scan_layers,
      remat_policy=cfg.remat_policy,
      scan_unroll=cfg.scan_unroll,
      **kw,
    )
    self.connector = MLPConnector(llm.hidden_size, **kw)
    vit_grid = cfg.vit.image_size // cfg.vit.patch_size
    self.vit_pos_embed = FixedPositionEmbedding(vit_grid, llm.hidden_size)
    self.vae2llm = logical_dense(
      llm.hidden_size, ("latent", "embed"), use_bias=True, name="vae2llm", **kw
    )
    if cfg.get("condition_injection", "bagel") not in CONDITION_INJECTIONS:
      raise ValueError(
        f"model.condition_injection: {cfg.condition_injection!r}; expected one of "
        f"{CONDITION_INJECTIONS}"
      )
    if cfg.get("flow_source", "gaussian") not in FLOW_SOURCES:
      raise ValueError(f"model.flow_source: {cfg.flow_source!r}; expected one of {FLOW_SOURCES}")
    if cfg.get("condition_injection", "bagel") == "spatial":
      # Zero-initialised, so a model converted from BAGEL starts exactly as BAGEL.
      self.cond2llm = logical_dense(
        llm.hidden_size, ("latent", "embed"), use_bias=True, name="cond2llm", init="zeros", **kw
      )
    self.time_embedder = TimestepEmbedder(llm.hidden_size, cfg.timestep_freq_dim, **kw)
    self.latent_pos_embed = FixedPositionEmbedding(cfg.max_latent_size, llm.hidden_size)
    self.decoder = MoTDecoder(
      llm,
      cfg.expert_scope,
      cfg.attention_impl,
      self.dtype,
      self.param_dtype,
      cfg.scan_layers,
      cfg.remat_policy,
      cfg.scan_unroll,
    )
    self.lm_head = logical_dense(
      llm.vocab_size, ("embed", "vocab"), use_bias=False, name="lm_head", **kw
    )
    # Zero-initialised as in BAGEL, so a fresh gen expert starts from a zero velocity.
    self.llm2vae = logical_dense(
      latent_dim(cfg), ("embed", "latent"), use_bias=True, name="llm2vae", init="zeros", **kw
    )

  def embed_und(self, batch: Batch) -> jax.Array:
    """und stream embeddings [B, Lu, D]: token embeddings, with ViT tokens in their slots.

    vit_patches is [B, Nv, F] (one image per row) or [B, n_images, Nv, F]; und_vit_index
    indexes the flattened n_images * Nv ViT tokens.
    """
    text = self.embed_tokens(batch["und_token_ids"])
    if "vit_patches" not in batch:  # a chunk without images (decoding steps, sampler queries)
      return text.astype(self.dtype)
    patches, position_ids, valid = (
      batch["vit_patches"],
      batch["vit_position_ids"],
      batch["vit_valid"],
    )
    if patches.ndim == 4:  # [B, n_images, Nv, F]: encode each image alone, then flatten
      rows, images, tokens = patches.shape[:3]
      fold = lambda x: x.reshape((rows * images,) + x.shape[2:])
      vit = self.vit(fold(patches), fold(position_ids), fold(valid))
      vit = vit.reshape(rows, images * tokens, vit.shape[-1])
      position_ids = position_ids.reshape(rows, images * tokens)
    else:
      vit = self.vit(patches, position_ids, valid)
    vit = self.connector(vit) + self.vit_pos_embed(position_ids).astype(self.dtype)
    vit_in_slots = jnp.take_along_axis(vit, batch["und_vit_index"][..., None], axis=1)
    is_vit = (batch["und_kind"] == KIND_VIT)[..., None]
    return jnp.where(is_vit, vit_in_slots.astype(self.dtype), text.astype(self.dtype))

  def embed_gen(self, batch: Batch) -> jax.Array:
    """gen stream embeddings [B, Lg, D] from (noised) latent tokens, timesteps and positions."""
    latents = batch["gen_latents"].astype(self.dtype)
    embedded = (
      self.vae2llm(latents)
      + self.time_embedder(batch["gen_timesteps"])
      + self.latent_pos_embed(batch["gen_latent_pos"]).astype(self.dtype)
    )
    if self.config.get("condition_injection", "bagel") == "spatial":
      # the clean condition at the same latent position (zeros: no condition, e.g. dropped)
      cond = batch.get("gen_cond_latents")
      cond = jnp.zeros_like(latents) if cond is None else cond.astype(self.dtype)
      embedded = embedded + self.cond2llm(cond)
    return embedded

  def hidden_states(self, batch: Batch, cache: DecoderCache | None = None, return_kv=False):
    """Runs the decoder; returns final-normed (und_h [B, Lu, D], gen_h [B, Lg, D]) and, with
    `return_kv`, the (k, v) [layers, B, Lu + Lg, KV, Dh] of these tokens (und first)."""
    und_h = constrain(self.embed_und(batch), ("act_batch", "act_len", "act_embed"))
    gen_h = constrain(self.embed_gen(batch), ("act_batch", "act_len", "act_embed"))
    return self.decoder(
      und_h,
      gen_h,
      stream_ids(batch, "und"),
      stream_ids(batch, "gen"),
      batch["und_positions"],
      batch["gen_positions"],
      cache,
      return_kv,
    )

  def __call__(self, batch: Batch, cache: DecoderCache | None = None, return_kv: bool = False):
    """Returns {'logits': [B, Lu, vocab] float32, 'velocity': [B, Lg, p*p*z] float32}, plus
    'kv' (this chunk's keys/values, for a cache) when `return_kv`.

    With `und_logit_positions` [B, C] in the batch, 'logits' is [B, C, vocab] at those und
    positions only (training: the positions with a description loss).

    With `cache`, the batch is a chunk that continues the cached sequences: its tokens attend to
    the visible cached tokens as the mask ids allow (decoding steps, sampler queries).
    """
    outputs = self.hidden_states(batch, cache, return_kv)
    und_h, gen_h = outputs[:2]
    if "und_logit_positions" in batch:  # [B, C]: the LM head only there (BAGEL's ce_loss_indexes)
      und_h = jnp.take_along_axis(und_h, batch["und_logit_positions"][..., None], axis=1)
    logits = constrain(self.lm_head(und_h), ("act_batch", "act_len", "act_vocab"))
    velocity = self.llm2vae(gen_h)
    result = {"logits": logits.astype(jnp.float32), "velocity": velocity.astype(jnp.float32)}
    if return_kv:
      result["kv"] = outputs[2]
    return result


def init_batch(model_config: ml_collections.ConfigDict) -> dict[str, jnp.ndarray]:
  """A small zero batch with every field the model reads (`types.BATCH_FIELDS`), for `init`.

  Parameter shapes depend on `config.model` alone, never on sequence lengths, so this gives the
  same parameters as a full-size batch (Flax draws initialisers by module path and shape).
  """
  patch = model_config.vit.patch_size
  sizes = dict(
    Lu=4, Lg=4, Nv=4, F=model_config.vit.num_channels * patch**2, S=8, D=latent_dim(model_config)
  )
  shapes = field_shapes(sizes, {**BATCH_FIELDS, **MODEL_INPUT_FIELDS})
  return {name: jnp.zeros((1,) + shape, dtype) for name, (shape, dtype) in shapes.items()}


_ABSTRACT_PARAMS: dict[str, Any] = {}  # abstract_params by the model config's JSON
_ABSTRACT_PARAMS_KEPT = 8


def abstract_params(model_config: ml_collections.ConfigDict) -> Any:
  """Boxed abstract MedQUni parameters (ShapeDtypeStructs with logical axis names); allocates
  nothing. `nn.unbox` gives the plain tree.

  Remembered per model config (its JSON, so a changed field is a new entry): a run's config
  checks, checkpoint fit check and setup each ask for it, and each trace of the 7B model's init
  took 0.6-0.9 s. Every call returns fresh containers around the shared, immutable leaves.
  """
  key = model_config.to_json_best_effort(sort_keys=True)
  if key not in _ABSTRACT_PARAMS:
    model = MedQUni(model_config)
    if len(_ABSTRACT_PARAMS) >= _ABSTRACT_PARAMS_KEPT:
      _ABSTRACT_PARAMS.pop(next(iter(_ABSTRACT_PARAMS)))
    _ABSTRACT_PARAMS[key] = jax.eval_shape(
      lambda rng: model.init(rng, init_batch(model_config))["params"], jax.random.key(0)
    )
  return jax.tree_util.tree_map(lambda leaf: leaf, _ABSTRACT_PARAMS[key])


def param_count(params: Any) -> int:
  return sum(x.size for x in jax.tree_util.tree_leaves(params))
