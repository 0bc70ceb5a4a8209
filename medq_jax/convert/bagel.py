"""Whole-model conversion for BAGEL / UniMedVL / MedQ-Uni checkpoints (`ema.safetensors` plus the
FLUX `ae.safetensors`), and for a transformers Qwen2 + SigLIP pair, into (MedQUni params, VAE
params); and export back to BAGEL names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medq_jax.convert.core import (
  KeyRule,
  export_params,
  iter_safetensors,
  linear_from_flax,
  linear_to_flax,
  load_params,
  save_safetensors,
)
from medq_jax.convert.flux_vae import flux_vae_rules
from medq_jax.convert.qwen2 import QWEN2_IGNORE, decoder_rules
from medq_jax.convert.siglip import BAGEL_PREFIX, siglip_ignore_patterns, siglip_rules

# Fixed sin-cos buffers BAGEL stores but we compute.
BAGEL_IGNORE = (r"^latent_pos_embed\.pos_embed$", r"^vit_pos_embed\.pos_embed$") + QWEN2_IGNORE


def _linear(src: str, dst: str) -> list[KeyRule]:
  return [
    KeyRule(f"{src}.weight", f"{dst}/kernel", linear_to_flax, linear_from_flax),
    KeyRule(f"{src}.bias", f"{dst}/bias"),
  ]


def bagel_rules(model_config) -> list[KeyRule]:
  """Rules for every MedQUni parameter in BAGEL's naming."""
  llm = model_config.llm
  rules = decoder_rules(
    "language_model.model.", "language_model.lm_head.weight", model_config.expert_scope, llm.qk_norm
  )
  rules += siglip_rules(
    BAGEL_PREFIX,
    "vit",
    num_channels=model_config.vit.num_channels,
    scan_layers=model_config.scan_layers,
  )
  rules += _linear("connector.fc1", "connector/fc1") + _linear("connector.fc2", "connector/fc2")
  rules += _linear("vae2llm", "vae2llm") + _linear("llm2vae", "llm2vae")
  rules += _linear("time_embedder.mlp.0", "time_embedder/mlp_0")
  rules += _linear("time_embedder.mlp.2", "time_embedder/mlp_2")
  return rules


def load_bagel(
  model_config, target_params: Any, target_vae: Any, ema_path: str | Sequence[str], ae_path: str
):
  """Loads (params, vae_params) from BAGEL-format files, tensor by tensor.

  target_params / target_vae: trees with `.shape` leaves (e.g. from `jax.eval_shape`).
  Raises ConversionError listing missing/unexpected keys and shape mismatches.
  """
  params = load_params(
    target_params,
    iter_safetensors(ema_path),
    bagel_rules(model_config),
    ignore=BAGEL_IGNORE + siglip_ignore_patterns(BAGEL_PREFIX),
  )
  vae_params = load_params(target_vae, iter_safetensors(ae_path), flux_vae_rules())
  return params, vae_params


def export_bagel(
  model_config,
  params: Any,
  vae_params: Any,
  ema_path: str,
  ae_path: str,
  max_shard_bytes: int = 4 << 30,
) -> list[str]:
  """Writes MedQUni params as BAGEL `ema.safetensors` and the VAE as FLUX `ae.safetensors`."""
  files = save_safetensors(
    export_params(params, bagel_rules(model_config)), ema_path, max_shard_bytes=max_shard_bytes
  )
  files += save_safetensors(
    export_params(vae_params, flux_vae_rules()), ae_path, max_shard_bytes=max_shard_bytes
  )
  return files


def _select(tree: dict, keep) -> dict:
  from medq_jax.convert.core import flatten, unflatten

  return unflatten({p: v for p, v in flatten(tree).items() if keep(p)})


def load_pretrained_parts(
  model_config, target: dict, qwen2_path: str | None = None, siglip_path: str | None = None
) -> dict[str, Any]:
  """{flax path: ndarray} for the parameters that come from separately pretrained checkpoints
  in transformers' naming: the decoder's und expert from a `Qwen2ForCausalLM`, tied or not (and
  the gen expert as a copy of it, BAGEL's `init_moe`), and the ViT from a `SiglipVisionModel`
  (its layers beyond `model.vit.num_layers` dropped, as BAGEL drops so400m's last layer).

  target: the full MedQUni tree with `.shape` leaves; only the loaded paths are returned.
  """
  from medq_jax.convert.core import flatten
  from medq_jax.convert.qwen2 import gen_twins, load_und_expert
  from medq_jax.convert.siglip import load_siglip
  from medq_jax.types import GEN_SUFFIX as GEN

  loaded: dict[str, Any] = {}
  if qwen2_path is not None:
    is_und_llm = lambda p: p.startswith(("decoder/", "embed_tokens/", "lm_head/")) and GEN not in p
    und = load_und_expert(model_config, _select(target, is_und_llm), qwen2_path)
    loaded.update(und)
    for und_path, gen_path in gen_twins(flatten(target)).items():  # gen expert = copy of und
      if und_path in und:
        loaded[gen_path] = und[und_path]
  if siglip_path is not None:
    vit = load_siglip(
      target["vit"],
      siglip_path,
      scan_layers=model_config.scan_layers,
      num_channels=model_config.vit.num_channels,
      max_layers=model_config.vit.num_layers,
    )
    loaded.update(flatten({"vit": vit}))
  return loaded


def init_from_pretrained(
  model_config, init_params: dict, qwen2_path: str | None = None, siglip_path: str | None = None
) -> dict:
  """BAGEL-style start from separately pretrained parts (see `load_pretrained_parts`); every
  other parameter (connector, vae2llm, llm2vae, time embedder) keeps its `init_params` value."""
  from medq_jax.convert.core import flatten, unflatten

  flat = dict(flatten(init_params))
  flat.update(load_pretrained_parts(model_config, init_params, qwen2_path, siglip_path))
  return unflatten(flat)
