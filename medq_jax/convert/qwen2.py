"""Key rules for the Qwen2 / BAGEL-MoT decoder: transformers' `Qwen2ForCausalLM` names and
BAGEL/UniMedVL's `language_model.*` names (with `_moe_gen` copies for the generation expert).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from medq_jax.convert.core import KeyRule, _expand_paths, linear_from_flax, linear_to_flax
from medq_jax.types import GEN_SUFFIX as GEN


def _layer_rules(src: str, dst: str, suffix: str, *, attention: bool, qk_norm: bool):
  """Rules for one expert's per-layer weights (`suffix` '' for und, '_moe_gen' for gen)."""
  rules = []
  linear = lambda s, d: KeyRule(
    f"{src}{s}.weight", f"{dst}{d}/kernel", linear_to_flax, linear_from_flax, stack="i"
  )
  vector = lambda s, d: KeyRule(f"{src}{s}", f"{dst}{d}", stack="i")
  if attention:
    for proj in ("q_proj", "k_proj", "v_proj"):
      rules.append(linear(f"self_attn.{proj}{suffix}", f"self_attn/{proj}{suffix}"))
      rules.append(vector(f"self_attn.{proj}{suffix}.bias", f"self_attn/{proj}{suffix}/bias"))
    rules.append(linear(f"self_attn.o_proj{suffix}", f"self_attn/o_proj{suffix}"))
    if qk_norm:
      for norm in ("q_norm", "k_norm"):
        rules.append(vector(f"self_attn.{norm}{suffix}.weight", f"self_attn/{norm}{suffix}/weight"))
    for norm in ("input_layernorm", "post_attention_layernorm"):
      rules.append(vector(f"{norm}{suffix}.weight", f"{norm}{suffix}/weight"))
  for proj in ("gate_proj", "up_proj", "down_proj"):
    rules.append(linear(f"mlp{suffix}.{proj}", f"mlp{suffix}/{proj}"))
  return rules


def decoder_rules(
  model_prefix: str,
  lm_head_key: str,
  expert_scope: str,
  qk_norm: bool,
  *,
  with_gen_expert: bool = True,
  target_prefix: str = "",
) -> list[KeyRule]:
  """Rules mapping a Qwen2-style decoder into `MedQUni` params.

  Args:
    model_prefix: key prefix of the decoder body ('model.' in transformers,
      'language_model.model.' in BAGEL).
    lm_head_key: full key of the LM head weight.
    expert_scope: 'ffn' (gen expert = separate FFN only) or 'all' (every weight doubled).
    qk_norm: whether the checkpoint has q_norm/k_norm.
    with_gen_expert: include rules for `_moe_gen` weights (False for plain Qwen2 checkpoints,
      whose gen expert is then initialised by `copy_und_to_gen`).
  """
  dst = f"{target_prefix.rstrip('/')}/" if target_prefix else ""
  src_layer = f"{model_prefix}layers.{{i}}."
  dst_layer = f"{dst}decoder/layers/"
  rules = [
    KeyRule(f"{model_prefix}embed_tokens.weight", f"{dst}embed_tokens/embedding"),
    KeyRule(f"{model_prefix}norm.weight", f"{dst}decoder/norm/weight"),
    KeyRule(lm_head_key, f"{dst}lm_head/kernel", linear_to_flax, linear_from_flax),
  ]
  rules += _layer_rules(src_layer, dst_layer, "", attention=True, qk_norm=qk_norm)
  if with_gen_expert:
    rules += _layer_rules(
      src_layer, dst_layer, GEN, attention=expert_scope == "all", qk_norm=qk_norm
    )
    if expert_scope == "all":
      rules.append(KeyRule(f"{model_prefix}norm{GEN}.weight", f"{dst}decoder/norm{GEN}/weight"))
  return rules


def qwen2_rules(expert_scope: str = "ffn", qk_norm: bool = False) -> list[KeyRule]:
  """transformers `Qwen2ForCausalLM` names (und expert only)."""
  return decoder_rules("model.", "lm_head.weight", expert_scope, qk_norm, with_gen_expert=False)


QWEN2_IGNORE = (r"rotary_emb\.inv_freq$",)

EMBED_KEY = "model.embed_tokens.weight"
LM_HEAD_KEY = "lm_head.weight"
_QK_NORM_KEY = re.compile(r"\.self_attn\.[qk]_norm\.weight$")


def hf_config(llm_config, **overrides):
  """The transformers `Qwen2Config` of `config.model.llm` (the decoder's und expert): what our
  tests build reference models from and what a Qwen2 export would carry."""
  from transformers import Qwen2Config

  fields = dict(
    vocab_size=llm_config.vocab_size,
    hidden_size=llm_config.hidden_size,
    intermediate_size=llm_config.intermediate_size,
    num_hidden_layers=llm_config.num_layers,
    num_attention_heads=llm_config.num_heads,
    num_key_value_heads=llm_config.num_kv_heads,
    rope_theta=llm_config.rope_theta,
    rms_norm_eps=llm_config.rms_norm_eps,
    tie_word_embeddings=False,
  )
  fields.update(overrides)
  return Qwen2Config(**fields)


def _config_json(paths: str | Sequence[str]) -> dict[str, Any] | None:
  """The transformers config.json beside a checkpoint (dir, file or index), or None."""
  first = paths if isinstance(paths, (str, os.PathLike)) else paths[0]
  first = str(first)
  folder = first if os.path.isdir(first) else os.path.dirname(first)
  path = os.path.join(folder, "config.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def checkpoint_keys(paths: str | Sequence[str]) -> set[str]:
  """Every tensor name in the safetensors files `paths` names (headers only, no tensor read)."""
  from safetensors import safe_open

  keys: set[str] = set()
  files = _expand_paths(paths)
  if not files:
    raise FileNotFoundError(
      f"{paths}: no .safetensors files (expected a transformers Qwen2 checkpoint: a directory "
      "of *.safetensors, one file or a *.safetensors.index.json)"
    )
  for path in files:
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: checkpoint file does not exist")
    with safe_open(path, framework="np") as handle:
      keys.update(handle.keys())
  return keys


def has_tied_embeddings(paths: str | Sequence[str], keys: Iterable[str]) -> bool:
  """Whether the LM head of a transformers Qwen2 checkpoint is its input embedding: config.json's
  `tie_word_embeddings` (Qwen2.5-0.5B/1.5B/3B: true, and no `lm_head.weight` is saved), or, with
  no config.json beside the files, the absence of `lm_head.weight`."""
  config = _config_json(paths)
  if config is not None:
    return bool(config.get("tie_word_embeddings", False))
  return LM_HEAD_KEY not in set(keys)


def tie_lm_head(tensors: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
  """The tensor stream of a tied checkpoint with `lm_head.weight` = `model.embed_tokens.weight`
  (any saved head dropped: transformers ties it to the embedding on load)."""
  for key, tensor in tensors:
    if key == LM_HEAD_KEY:
      continue
    yield key, tensor
    if key == EMBED_KEY:
      yield LM_HEAD_KEY, tensor


def load_und_expert(model_config, target: dict, paths: str | Sequence[str]) -> dict[str, Any]:
  """{flax path: ndarray} of the decoder's und expert, embeddings and LM head from a
  transformers Qwen2/Qwen2.5 `Qwen2ForCausalLM` checkpoint (dir, file or index.json).

  target: the und parameters with `.shape` leaves. A tied checkpoint (`has_tied_embeddings`)
  gives the LM head a copy of the embedding, so the head is untied from here on. When the model
  has QK-norm and the checkpoint none (Qwen2/2.5 never do), q_norm/k_norm keep their fresh
  initialisation (ones: the identity scale), as BAGEL's `from_pretrained` leaves them.
  """
  from medq_jax.convert.core import flatten, iter_safetensors, load_params, unflatten

  keys = checkpoint_keys(paths)
  qk_norm = model_config.llm.qk_norm and any(_QK_NORM_KEY.search(k) for k in keys)
  if model_config.llm.qk_norm and not qk_norm:
    logging.info("%s has no q_norm/k_norm: they keep their initialisation", paths)
    flat = flatten(target)
    target = unflatten({p: v for p, v in flat.items() if not re.search(r"/[qk]_norm/", p)})
  tensors = iter_safetensors(paths)
  if has_tied_embeddings(paths, keys):
    logging.info("%s: tied embeddings, the LM head starts as a copy of embed_tokens", paths)
    tensors = tie_lm_head(tensors)
  rules = qwen2_rules(model_config.expert_scope, qk_norm)
  return flatten(load_params(target, tensors, rules, ignore=QWEN2_IGNORE))


def gen_twins(paths) -> dict[str, str]:
  """{und path: gen path} for every '/'-separated Flax path whose `_moe_gen` twin (one path
  component suffixed, e.g. mlp -> mlp_moe_gen, norm -> norm_moe_gen) is also in `paths`."""
  paths = set(paths)
  twins = {}
  for path in paths:
    parts = path.split("/")
    for index, part in enumerate(parts[:-1]):
      twin = "/".join(parts[:index] + [part + GEN] + parts[index + 1 :])
      if twin in paths:
        twins[path] = twin
  return twins


def copy_und_to_gen(params: dict) -> dict:
  """Fills every `*_moe_gen` parameter with a copy of its und twin (BAGEL's initialisation of the
  generation expert from a pretrained LLM). Returns a new nested dict."""
  from medq_jax.convert.core import flatten, unflatten

  flat = dict(flatten(params))
  for und, gen in gen_twins(flat).items():
    flat[gen] = flat[und]
  return unflatten(flat)
