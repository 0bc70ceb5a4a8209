"""Checkpoint conversion engine: named tensors <-> nested Flax params, one tensor at a time.

A checkpoint format is described by a list of `KeyRule`s, each pairing a source key template
(e.g. ``language_model.model.layers.{layer}.self_attn.q_proj.weight``) with a Flax path template
(e.g. ``decoder/layers/attn/q_proj/kernel``) and a pair of array transforms. Placeholders match
decimal integers. A rule with ``stack`` names the placeholder that indexes axis 0 of a scanned
(stacked) parameter, so per-layer checkpoint tensors land in one ``[num_layers, ...]`` array.

Loading never holds a whole checkpoint: tensors are streamed from `iter_safetensors` and written
into preallocated target arrays; missing keys, unexpected keys and shape mismatches are collected
and raised together in one `ConversionError`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

Array = np.ndarray
Transform = Callable[[Array], Array]

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


class ConversionError(ValueError):
  """Raised when a checkpoint and a parameter tree do not match; lists every problem."""


def identity(x: Array) -> Array:
  return x


def linear_to_flax(w: Array) -> Array:
  """torch Linear weight [out, in] -> Flax Dense kernel [in, out]."""
  return np.ascontiguousarray(w.T)


def linear_from_flax(k: Array) -> Array:
  return np.ascontiguousarray(k.T)


def conv_to_flax(w: Array) -> Array:
  """torch Conv2d weight [out, in, kh, kw] -> Flax Conv kernel [kh, kw, in, out]."""
  return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def conv_from_flax(k: Array) -> Array:
  return np.ascontiguousarray(k.transpose(3, 2, 0, 1))


@dataclasses.dataclass(frozen=True)
class KeyRule:
  """One source-key template <-> Flax-path template pairing.

  Attributes:
    source: checkpoint key template, placeholders ``{name}`` match integers.
    target: '/'-separated Flax path template; may use the same placeholders, except `stack`.
    to_flax: transform applied to the checkpoint tensor when loading.
    from_flax: inverse transform applied when exporting.
    stack: placeholder whose value indexes axis 0 of a stacked (scanned) target.
  """

  source: str
  target: str
  to_flax: Transform = identity
  from_flax: Transform = identity
  stack: str | None = None

  def __post_init__(self):
    if self.stack is not None:
      if f"{{{self.stack}}}" not in self.source:
        raise ValueError(f"rule {self.source!r}: stack placeholder {self.stack!r} not in source")
      if f"{{{self.stack}}}" in self.target:
        raise ValueError(f"rule {self.target!r}: stack placeholder must not appear in target")


def _template_regex(template: str) -> re.Pattern:
  parts, last = [], 0
  for match in _PLACEHOLDER.finditer(template):
    parts.append(re.escape(template[last : match.start()]))
    parts.append(f"(?P<{match.group(1)}>\\d+)")
    last = match.end()
  parts.append(re.escape(template[last:]))
  return re.compile("".join(parts))


@dataclasses.dataclass(frozen=True)
class _CompiledRule:
  rule: KeyRule
  source_re: re.Pattern
  target_re: re.Pattern


def _compile(rules: Sequence[KeyRule]) -> list[_CompiledRule]:
  return [_CompiledRule(r, _template_regex(r.source), _template_regex(r.target)) for r in rules]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested dict -> {'a/b/c': leaf}."""
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, Mapping):
      flat.update(flatten(value, path))
    else:
      flat[path] = value
  return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{'a/b/c': leaf} -> nested dict."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def iter_safetensors(paths: str | Sequence[str]) -> Iterator[tuple[str, Array]]:
  """Yields (key, float32/int ndarray) one tensor at a time from one or more safetensors files.

  A directory or a ``*.safetensors.index.json`` expands to its shards. bfloat16 tensors are
  read through torch (NumPy has no bfloat16) and upcast to float32.
  """
  from safetensors import safe_open

  for path in _expand_paths(paths):
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: checkpoint file does not exist")
    with safe_open(path, framework="pt") as handle:
      for key in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
        tensor = handle.get_tensor(key)
        if tensor.dtype.is_floating_point:
          tensor = tensor.float()
        yield key, tensor.numpy()


def _expand_paths(paths: str | Sequence[str]) -> list[str]:
  if isinstance(paths, (str, os.PathLike)):
    paths = [str(paths)]
  expanded = []
  for path in paths:
    if os.path.isdir(path):
      expanded += sorted(
        os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors")
      )
    elif path.endswith(".index.json"):
      with open(path) as f:
        weight_map = json.load(f)["weight_map"]
      base = os.path.dirname(path)
      expanded += [os.path.join(base, f) for f in sorted(set(weight_map.values()))]
    else:
      expanded.append(path)
  return expanded


def _shape_of(leaf: Any) -> tuple[int, ...]:
  return tuple(getattr(leaf, "shape", np.shape(leaf)))


def load_params(
  target: Mapping[str, Any],
  tensors: Iterable[tuple[str, Array]],
  rules: Sequence[KeyRule],
  *,
  ignore: Sequence[str] = (),
  dtype: Any = np.float32,
) -> dict[str, Any]:
  """Fills a parameter tree shaped like `target` from streamed checkpoint tensors.

  Args:
    target: nested dict whose leaves have `.shape` (arrays or jax.ShapeDtypeStruct), the tree
      to produce (e.g. ``jax.eval_shape(model.init, ...)['params']``, unboxed).
    tensors: iterable of (checkpoint key, ndarray), e.g. `iter_safetensors(path)`.
    rules: the format's key rules.
    ignore: regexes of checkpoint keys to skip silently (e.g. rotary caches).
    dtype: dtype of the produced arrays.

  Returns:
    nested dict of np.ndarray with exactly the structure of `target`.

  Raises:
    ConversionError: listing every unexpected key, missing parameter and shape mismatch.
  """
  compiled = _compile(rules)
  ignore_res = [re.compile(p) for p in ignore]
  shapes = {path: _shape_of(leaf) for path, leaf in flatten(target).items()}
  out: dict[str, Array] = {}
  filled: dict[str, set[int] | bool] = {}
  unexpected, mismatched = [], []

  for key, tensor in tensors:
    match = next(((c, m) for c in compiled if (m := c.source_re.fullmatch(key))), None)
    if match is None:
      if not any(r.search(key) for r in ignore_res):
        unexpected.append(key)
      continue
    crule, m = match
    groups = m.groupdict()
    path = crule.rule.target.format(**groups)
    if path not in shapes:
      unexpected.append(f"{key} (-> {path}, not in the model)")
      continue
    value = crule.rule.to_flax(np.asarray(tensor))
    shape = shapes[path]
    if crule.rule.stack is not None:
      index = int(groups[crule.rule.stack])
      if index >= shape[0]:
        unexpected.append(f"{key} (layer {index} >= {shape[0]} layers in the model)")
        continue
      if value.shape != shape[1:]:
        mismatched.append(f"{key} -> {path}[{index}]: expected {shape[1:]}, got {value.shape}")
        continue
      if path not in out:
        out[path] = np.empty(shape, dtype)
        filled[path] = set()
      out[path][index] = value
      filled[path].add(index)
    else:
      if value.shape != shape:
        mismatched.append(f"{key} -> {path}: expected {shape}, got {value.shape}")
        continue
      out[path] = value.astype(dtype, copy=False)
      filled[path] = True

  missing = []
  for path, shape in shapes.items():
    state = filled.get(path)
    if state is None:
      missing.append(path)
    elif isinstance(state, set) and len(state) != shape[0]:
      absent = sorted(set(range(shape[0])) - state)
      missing.append(f"{path} (layers {absent})")
  _raise_if_problems(unexpected, missing, mismatched)
  return unflatten(out)


def _raise_if_problems(unexpected, missing, mismatched, limit: int = 25):
  if not (unexpected or missing or mismatched):
    return
  lines = []
  for title, items in (
    ("unexpected checkpoint keys", unexpected),
    ("model parameters missing from the checkpoint", missing),
    ("shape mismatches", mismatched),
  ):
    if items:
      lines.append(f"{len(items)} {title}:")
      lines += [f"  {item}" for item in items[:limit]]
      if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more")
  raise ConversionError("\n".join(lines))


def export_params(
  params: Mapping[str, Any], rules: Sequence[KeyRule]
) -> Iterator[tuple[str, Array]]:
  """Yields (checkpoint key, ndarray) for every parameter, inverting `load_params`.

  Raises ConversionError naming the Flax path when no rule covers a parameter.
  """
  compiled = _compile(rules)
  for path, leaf in flatten(params).items():
    match = next(((c, m) for c in compiled if (m := c.target_re.fullmatch(path))), None)
    if match is None:
      raise ConversionError(f"no export rule covers the parameter {path}")
    crule, m = match
    value = np.asarray(leaf, dtype=np.float32)
    if crule.rule.stack is None:
      yield crule.rule.source.format(**m.groupdict()), crule.rule.from_flax(value)
    else:
      for index in range(value.shape[0]):
        key = crule.rule.source.format(**m.groupdict(), **{crule.rule.stack: index})
        yield key, crule.rule.from_flax(value[index])


def save_safetensors(
  tensors: Iterable[tuple[str, Array]], path: str, *, max_shard_bytes: int = 4 << 30
) -> list[str]:
  """Writes streamed tensors to one file, or to shards plus an HF-style index when large.

  At most one shard (`max_shard_bytes`) is held in memory beyond the source parameters.
  Returns the list of files written.
  """
  from safetensors.numpy import save_file

  base = path[: -len(".safetensors")] if path.endswith(".safetensors") else path
  shards: list[dict[str, Array]] = [{}]
  written, weight_map, size = [], {}, 0

  def flush(final: bool):
    nonlocal size
    if not shards[-1]:
      return
    name = f"{base}-{len(written) + 1:05d}.safetensors"
    save_file(shards[-1], name)
    written.append(name)
    for key in shards[-1]:
      weight_map[key] = os.path.basename(name)
    shards[-1] = {}
    size = 0

  for key, value in tensors:
    value = np.ascontiguousarray(value)
    if size and size + value.nbytes > max_shard_bytes:
      flush(False)
    shards[-1][key] = value
    size += value.nbytes
  flush(True)
  if len(written) == 1:
    os.replace(written[0], f"{base}.safetensors")
    return [f"{base}.safetensors"]
  with open(f"{base}.safetensors.index.json", "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=1)
  return written + [f"{base}.safetensors.index.json"]
