"""Key rules for the Qwen2 / BAGEL-MoT decoder: transformers' `Qwen2ForCausalLM` names and
BAGEL/UniMedVL's `language_model.*` names (with `_moe_gen` copies for the generation expert).
"""

from __future__ import annotations

from medq_jax.convert.core import KeyRule, linear_from_flax, linear_to_flax
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
