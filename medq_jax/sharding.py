"""Device mesh and logical-axis sharding: the only place mesh axes meet model code.

Mesh axes are ('data', 'fsdp', 'tensor'); sizes come from `config.mesh.shape` with one -1 filled
from the device count. Logical axis names on parameters and activations map to mesh axes through
`config.sharding_rules`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Fills a single -1 so that the product equals `num_devices`; validates the rest."""
  try:
    shape = tuple(int(s) for s in shape)
  except (TypeError, ValueError):
    raise ValueError(
      f"mesh.shape: expected (data, fsdp, tensor) integers such as (1, -1, 2), got {shape!r}"
    ) from None
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh.shape {shape}: sizes must be positive (or -1 for the rest)")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh.shape: at most one -1 allowed, got {shape}")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"mesh.shape {shape}: {num_devices} devices not divisible by {known}")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if int(np.prod(shape)) != num_devices:
    raise ValueError(f"mesh.shape {shape} needs {int(np.prod(shape))} devices, have {num_devices}")
  return shape


def make_mesh(mesh_config, devices: Sequence[Any] | None = None) -> Mesh:
  """Builds the ('data', 'fsdp', 'tensor') mesh with Auto axis types (sharding constraints
  inside the model need Auto; jax.make_mesh now defaults to Explicit)."""
  devices = list(devices if devices is not None else jax.devices())
  shape = resolve_mesh_shape(mesh_config.shape, len(devices))
  axes = tuple(mesh_config.axes)
  if devices == list(jax.devices()):
    return jax.make_mesh(shape, axes, axis_types=(jax.sharding.AxisType.Auto,) * len(axes))
  return Mesh(
    np.asarray(devices).reshape(shape), axes, axis_types=(jax.sharding.AxisType.Auto,) * len(axes)
  )


def rules_tuple(rules) -> tuple[tuple[str, Any], ...]:
  """config.sharding_rules (tuples or lists from ml_collections) -> hashable tuple of pairs."""
  out = []
  for name, axes in rules:
    out.append((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes))
  return tuple(out)


def logical_partition_specs(abstract_boxed: Any) -> Any:
  """PartitionSpecs in logical names for a boxed (LogicallyPartitioned) tree."""
  return nn.get_partition_spec(abstract_boxed)


def mesh_shardings(abstract_boxed: Any, mesh: Mesh, rules) -> Any:
  """NamedShardings for every leaf of a boxed tree, through the logical rules."""
  specs = logical_partition_specs(abstract_boxed)
  return nn.logical_to_mesh_sharding(specs, mesh, rules_tuple(rules))


def placed_shapes(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree`'s leaves (arrays or shapes) in `shardings` (a matching tree):
  the abstract arguments of a lowering, or the target of a restore; nothing is allocated."""
  return jax.tree_util.tree_map(
    lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
    tree,
    shardings,
  )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over ('data', 'fsdp'); everything else replicated."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def per_host_batch_size(global_batch_size: int) -> int:
  """Rows each JAX process loads; the global batch must split evenly over processes."""
  count = jax.process_count()
  if global_batch_size % count:
    raise ValueError(f"train.batch_size={global_batch_size} is not divisible by {count} processes")
  return global_batch_size // count


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy batch -> global jax.Arrays sharded over the batch axes (multi-host safe)."""
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in local_batch.items()
  }


import contextlib  # noqa: E402


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules):
  """Activates the mesh and the logical rules, so the model's activation constraints apply
  while functions are traced (without the rules they are silently no-ops)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules_tuple(rules)):
    yield
