"""SigLIP vision tower checkpoints (transformers or BAGEL) <-> `SiglipVisionEncoder` params.

Two source layouts share every name except the patch embedding:

  transformers: ``vision_model.embeddings.patch_embedding.weight`` (hub `SiglipModel` files; a
    transformers-5 `SiglipVisionModel.save_pretrained` writes the same names without the
    ``vision_model.`` prefix) is a Conv2d weight [D, C, p, p]; the pooling head ``head.*`` is
    present.
  BAGEL (``ema.safetensors``): keys start with ``vit_model.vision_model.``, the patch embedding
    is the Linear weight [D, p*p*C] made by ``convert_conv2d_to_linear`` (conv weight permuted
    to (D, kh, kw, C) and flattened), and there is no head.

Loading accepts either patch-embedding form whatever the prefix; exporting writes the form named
by `patch_embedding_layout` (default: "linear" for a ``vit_model.`` prefix, "conv" otherwise).

Example (the tower alone, prefix detected)::

    params = load_siglip(shapes, model_dir_or_file)

Inside a whole-model rule set use `siglip_rules(prefix, "vit")` with
`siglip_ignore_patterns(prefix)`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from medq_jax.convert.core import (
  ConversionError,
  KeyRule,
  _expand_paths,
  iter_safetensors,
  linear_from_flax,
  linear_to_flax,
  load_params,
)

BAGEL_PREFIX = "vit_model.vision_model."
TRANSFORMERS_PREFIX = "vision_model."

_LAYER_LINEARS = (
  "self_attn.q_proj",
  "self_attn.k_proj",
  "self_attn.v_proj",
  "self_attn.out_proj",
  "mlp.fc1",
  "mlp.fc2",
)
_LAYER_NORMS = ("layer_norm1", "layer_norm2")


def patch_embedding_to_flax(weight: np.ndarray) -> np.ndarray:
  """Conv2d [D, C, p, p] or BAGEL Linear [D, p*p*C] -> Dense kernel [p*p*C, D], (kh, kw, C) rows."""
  if weight.ndim == 4:
    weight = weight.transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)
  elif weight.ndim != 2:
    raise ValueError(
      f"patch_embedding.weight: expected [D, C, p, p] or [D, p*p*C], got {weight.shape}"
    )
  return np.ascontiguousarray(weight.T)


def patch_embedding_from_flax(num_channels: int, layout: str):
  """Returns the inverse of `patch_embedding_to_flax` writing the `layout` ('conv'/'linear') form."""

  def convert(kernel: np.ndarray) -> np.ndarray:
    linear = np.ascontiguousarray(kernel.T)  # [D, p*p*C]
    if layout == "linear":
      return linear
    embed, features = linear.shape
    patch = int(round((features // num_channels) ** 0.5))
    if patch * patch * num_channels != features:
      raise ValueError(
        f"patch_embedding kernel {kernel.shape}: {features} is not p*p*{num_channels}"
      )
    return np.ascontiguousarray(
      linear.reshape(embed, patch, patch, num_channels).transpose(0, 3, 1, 2)
    )

  return convert


def _join(prefix: str) -> str:
  return f"{prefix.rstrip('/')}/" if prefix else ""


def siglip_rules(
  source_prefix: str = TRANSFORMERS_PREFIX,
  target_prefix: str = "",
  *,
  patch_embedding_layout: str | None = None,
  num_channels: int = 3,
  scan_layers: bool = True,
) -> list[KeyRule]:
  """Key rules for a SigLIP vision tower.

  Args:
    source_prefix: checkpoint prefix in front of ``embeddings.`` / ``encoder.``:
      ``"vision_model."`` (hub SigLIP files), ``""`` (transformers-5 `SiglipVisionModel`
      saves) or ``"vit_model.vision_model."`` (BAGEL).
    target_prefix: Flax path of the `SiglipVisionEncoder` params inside the tree ('' at root,
      e.g. 'vit' inside the full model).
    patch_embedding_layout: export form of the patch embedding, 'conv' ([D, C, p, p],
      transformers) or 'linear' ([D, p*p*C], BAGEL); default from the prefix.
    num_channels: C, needed to rebuild the conv form on export.
    scan_layers: whether the target encoder was built with scan_layers (stacked layers).
  """
  if patch_embedding_layout is None:
    patch_embedding_layout = "linear" if source_prefix.startswith("vit_model.") else "conv"
  if patch_embedding_layout not in ("conv", "linear"):
    raise ValueError(
      f"patch_embedding_layout: expected 'conv' or 'linear', got {patch_embedding_layout!r}"
    )
  src, dst = source_prefix, _join(target_prefix)
  rules = [
    KeyRule(
      f"{src}embeddings.patch_embedding.weight",
      f"{dst}embeddings/patch_embedding/kernel",
      patch_embedding_to_flax,
      patch_embedding_from_flax(num_channels, patch_embedding_layout),
    ),
    KeyRule(f"{src}embeddings.patch_embedding.bias", f"{dst}embeddings/patch_embedding/bias"),
    KeyRule(
      f"{src}embeddings.position_embedding.weight", f"{dst}embeddings/position_embedding/embedding"
    ),
    KeyRule(f"{src}post_layernorm.weight", f"{dst}post_layernorm/scale"),
    KeyRule(f"{src}post_layernorm.bias", f"{dst}post_layernorm/bias"),
  ]
  layer_src = f"{src}encoder.layers.{{i}}."
  layer_dst = f"{dst}encoder/layers/" if scan_layers else f"{dst}encoder/layers_{{i}}/"
  stack = "i" if scan_layers else None
  for name in _LAYER_LINEARS:
    path = name.replace(".", "/")
    rules.append(
      KeyRule(
        f"{layer_src}{name}.weight",
        f"{layer_dst}{path}/kernel",
        linear_to_flax,
        linear_from_flax,
        stack=stack,
      )
    )
    rules.append(KeyRule(f"{layer_src}{name}.bias", f"{layer_dst}{path}/bias", stack=stack))
  for name in _LAYER_NORMS:
    rules.append(KeyRule(f"{layer_src}{name}.weight", f"{layer_dst}{name}/scale", stack=stack))
    rules.append(KeyRule(f"{layer_src}{name}.bias", f"{layer_dst}{name}/bias", stack=stack))
  return rules


def siglip_ignore_patterns(
  source_prefix: str = TRANSFORMERS_PREFIX, *, outside_prefix: bool = False
) -> tuple[str, ...]:
  """Regexes for `load_params(ignore=...)`.

  Always skips the pooling head (BAGEL drops it) and the ``position_ids`` buffer. With
  `outside_prefix=True` also every key not under `source_prefix` (a SigLIP text tower and logit
  scale, or the LLM in BAGEL's ``ema.safetensors``): only for loading the vision tower alone,
  never together with other rule sets, whose unexpected keys it would hide.
  """
  src = re.escape(source_prefix)
  patterns = [f"^{src}head\\.", f"^{src}embeddings\\.position_ids$"]
  if outside_prefix and source_prefix:
    patterns.append(f"^(?!{src})")
  return tuple(patterns)


def detect_siglip_prefix(keys: Iterable[str]) -> str:
  """The prefix in front of ``embeddings.patch_embedding.weight`` among checkpoint `keys`."""
  suffix = "embeddings.patch_embedding.weight"
  found = sorted({k[: -len(suffix)] for k in keys if k.endswith(suffix)})
  if len(found) != 1:
    raise ConversionError(
      f"expected exactly one '*{suffix}' key to locate the SigLIP tower, found {found}"
    )
  return found[0]


def load_siglip(
  target: Mapping[str, Any],
  paths: str | Sequence[str],
  *,
  source_prefix: str | None = None,
  scan_layers: bool = True,
  num_channels: int = 3,
  max_layers: int | None = None,
) -> dict[str, Any]:
  """Loads a `SiglipVisionEncoder` param tree (shaped like `target`) from safetensors files.

  `source_prefix` is detected from the key names when None, so a hub SigLIP file
  (``vision_model.``), a transformers-5 `SiglipVisionModel` save (no prefix) and BAGEL's
  ``ema.safetensors`` (``vit_model.vision_model.``) all load; keys outside the tower are skipped.
  `max_layers`: encoder layers from this index on are skipped (BAGEL builds its ViT with
  `vit_select_layer=-2`, one layer fewer than SigLIP so400m's 27, and drops the last); None
  keeps every layer, so a checkpoint deeper than `target` is an error.
  """
  if source_prefix is None:
    from safetensors import safe_open

    keys = []
    for path in _expand_paths(paths):
      with safe_open(path, framework="np") as handle:
        keys += list(handle.keys())
    source_prefix = detect_siglip_prefix(keys)
  rules = siglip_rules(source_prefix, "", num_channels=num_channels, scan_layers=scan_layers)
  ignore = siglip_ignore_patterns(source_prefix, outside_prefix=True)
  tensors = iter_safetensors(paths)
  if max_layers is not None:
    tensors = _drop_layers_from(tensors, f"{source_prefix}encoder.layers.", max_layers)
  return load_params(target, tensors, rules, ignore=ignore)


def _drop_layers_from(tensors, layer_prefix: str, first_dropped: int):
  """The tensor stream without encoder layers `first_dropped` and above (logged once)."""
  pattern = re.compile(re.escape(layer_prefix) + r"(\d+)\.")
  dropped = set()
  for key, tensor in tensors:
    match = pattern.match(key)
    if match and int(match.group(1)) >= first_dropped:
      dropped.add(int(match.group(1)))
      continue
    yield key, tensor
  if dropped:
    logging.info("SigLIP layers %s dropped (the model has %d)", sorted(dropped), first_dropped)


def config_from_siglip(hf_config: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A `SiglipVisionEncoder` config from a transformers/BAGEL SiglipVisionConfig dict.

  Raises ValueError for BAGEL's rotary variant (``rope: true``), which this encoder does not
  implement (BAGEL's released checkpoints use learned positions, ``rope: false``).
  """
  if hf_config.get("rope", False):
    raise ValueError("SiglipVisionConfig.rope=True (2-D rotary ViT) is not supported")
  return ml_collections.ConfigDict(
    dict(
      hidden_size=int(hf_config["hidden_size"]),
      intermediate_size=int(hf_config["intermediate_size"]),
      num_layers=int(hf_config["num_hidden_layers"]),
      num_heads=int(hf_config["num_attention_heads"]),
      patch_size=int(hf_config["patch_size"]),
      image_size=int(hf_config["image_size"]),
      num_channels=int(hf_config.get("num_channels", 3)),
      layer_norm_eps=float(hf_config.get("layer_norm_eps", 1e-6)),
    )
  )
