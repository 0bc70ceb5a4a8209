"""Mesh PartitionSpecs of every parameter, as plain data (for golden files and logs)."""

from __future__ import annotations

import flax.linen as nn

from medq_jax import sharding as sharding_lib
from medq_jax.convert.core import flatten
from medq_jax.models.medq_uni import abstract_params


def spec_to_list(spec) -> list:
  return [list(a) if isinstance(a, tuple) else a for a in spec]


def param_partition_specs(config) -> dict[str, dict]:
  """{'params/path': spec list, 'vae/path': ...} for `config` under its sharding rules."""
  out = {}
  boxed = abstract_params(config.model)
  rules = sharding_lib.rules_tuple(config.sharding_rules)
  for prefix, tree in (("params", boxed),):
    mesh_axes = nn.logical_to_mesh(nn.get_partition_spec(tree), rules)
    for path, pspec in flatten(mesh_axes).items():
      out[f"{prefix}/{path}"] = spec_to_list(pspec)
  return out
