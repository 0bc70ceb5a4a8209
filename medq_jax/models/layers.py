"""Small building blocks shared by the decoder and embedders: RMSNorm, RoPE, dense layers with
logical axis names, and fixed sin-cos position tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def dtype_of(name: str | Dtype) -> Dtype:
  """'float32' / 'bfloat16' config strings -> jnp dtypes."""
  return jnp.dtype(name) if isinstance(name, str) else name


def rows_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """`lax.dot_general` for a dense layer, with the leading axes of lhs folded into one row axis.

  [B, L, D] x [D, F] runs as [B*L, D] x [D, F] (a free reshape). XLA's CPU dots take rank-2
  operands in either orientation, but a rank-3 weight gradient, contracting B and L, is first
  copied into a transposed layout: the `small` step ran 5% slower for it (docs/training.md).
  Other dimension numbers go to `lax.dot_general` unchanged.
  """
  (lhs_contract, rhs_contract), batch = dimension_numbers
  is_dense = (
    lhs.ndim > 2
    and rhs.ndim == 2
    and tuple(lhs_contract) == (lhs.ndim - 1,)
    and tuple(rhs_contract) == (0,)
    and tuple(map(tuple, batch)) == ((), ())
  )
  kw = dict(precision=precision, preferred_element_type=preferred_element_type)
  if not is_dense:
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, **kw)
  rows = jax.lax.dot_general(lhs.reshape(-1, lhs.shape[-1]), rhs, (((1,), (0,)), ((), ())), **kw)
  return rows.reshape(*lhs.shape[:-1], rhs.shape[1])


# Kernel initialisers of `logical_dense`: "normal" (std 0.02: Qwen2 and BAGEL), "zeros" (a new
# head that starts at zero, as BAGEL's llm2vae), "lecun" (flax's default: the ViT's layers).
DENSE_INITS = {
  "normal": nn.initializers.normal(0.02),
  "zeros": nn.initializers.zeros,
  "lecun": nn.initializers.lecun_normal(),
}


def logical_dense(
  features: int,
  axes: tuple[str, str],
  *,
  use_bias: bool,
  dtype: Dtype,
  param_dtype: Dtype,
  name: str,
  init: str = "normal",
) -> nn.Dense:
  """nn.Dense whose kernel [in, out] and bias [out] carry logical axis names; its matmul is
  `rows_dot_general`; `init` names its kernel initialiser (`DENSE_INITS`). The one dense layer of
  the decoder, the embedders and the ViT."""
  return nn.Dense(
    features,
    use_bias=use_bias,
    dtype=dtype,
    param_dtype=param_dtype,
    name=name,
    dot_general=rows_dot_general,
    kernel_init=nn.with_logical_partitioning(DENSE_INITS[init], axes),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)),
  )


class RMSNorm(nn.Module):
  """Qwen2 RMSNorm: x * rsqrt(mean(x^2) + eps) * weight, computed in float32."""

  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str = "norm"

  @nn.compact
  def __call__(self, x):
    weight = self.param(
      "weight",
      nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
      (x.shape[-1],),
      self.param_dtype,
    )
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (x32 * weight.astype(jnp.float32)).astype(self.dtype)


def rope_tables(positions: jax.Array, head_dim: int, theta: float):
  """cos, sin tables [B, L, head_dim] for integer positions [B, L] (Qwen2/HF convention)."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


@jax.custom_vjp
def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates x [B, L, heads, head_dim] by the tables [B, L, head_dim] (rotate-half form).

  The backward is written out (the rotation's transpose is the opposite rotation): autodiff of
  the two half-slices adds two zero-padded gradients, a pass per slice (q's gradient at `small`:
  4.0 -> 1.2 ms). The tables get no gradient (they come from integer positions).
  """
  return _rope_forward(x, cos, sin)


def _rotate_half(x: jax.Array) -> jax.Array:
  """concat(-x2, x1) for x = concat(x1, x2) over the last axis; its transpose is its negation."""
  half = x.shape[-1] // 2
  return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _rope_forward(x, cos, sin):
  cos, sin = cos[:, :, None, :], sin[:, :, None, :]
  x32 = x.astype(jnp.float32)
  return (x32 * cos + _rotate_half(x32) * sin).astype(x.dtype)


def _rope_fwd(x, cos, sin):
  return _rope_forward(x, cos, sin), (cos, sin)


def _rope_bwd(tables, d_out):
  cos, sin = (t[:, :, None, :] for t in tables)
  d32 = d_out.astype(jnp.float32)
  d_x = d32 * cos - _rotate_half(d32 * sin)
  return d_x.astype(d_out.dtype), None, None


apply_rope.defvjp(_rope_fwd, _rope_bwd)


def sincos_1d(embed_dim: int, positions: np.ndarray) -> np.ndarray:
  """MAE 1-D sin-cos table: [len(positions), embed_dim] = concat(sin, cos)."""
  omega = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0))
  out = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(embed_dim: int, grid_side: int) -> np.ndarray:
  """MAE/BAGEL 2-D sin-cos table [grid_side**2, embed_dim]; row index = h * grid_side + w."""
  grid_h = np.arange(grid_side, dtype=np.float32)
  grid_w = np.arange(grid_side, dtype=np.float32)
  grid = np.meshgrid(grid_w, grid_h)  # w first, as in MAE
  emb_a = sincos_1d(embed_dim // 2, grid[0])
  emb_b = sincos_1d(embed_dim // 2, grid[1])
  return np.concatenate([emb_a, emb_b], axis=1).astype(np.float32)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Logical sharding constraint on an activation (no-op outside a mesh with rules)."""
  return nn.with_logical_constraint(x, tuple(axes))


# The one table of rematerialisation policies (`config.model.remat_policy`), shared by every
# scanned layer stack (decoder and ViT), so a policy valid for one is valid for all.
REMAT_POLICIES = {
  "none": None,
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  "dots_saveable": jax.checkpoint_policies.dots_saveable,
}


def remat_layer(
  layer_cls: type[nn.Module], policy: str, scan_layers: bool, scan_unroll: bool
) -> type[nn.Module]:
  """`layer_cls` wrapped in `nn.remat` with the named policy ('none' returns it unchanged).

  A layer inside a rolled scan (`scan_layers` and not `scan_unroll`) needs no `prevent_cse`:
  the loop already keeps XLA from merging the recomputation with the forward; straight-line
  layers (unscanned or unrolled) do.
  """
  if policy not in REMAT_POLICIES:
    raise ValueError(
      f"model.remat_policy: unknown policy {policy!r}; known: {sorted(REMAT_POLICIES)}"
    )
  if policy == "none":
    return layer_cls
  rolled_loop = scan_layers and not scan_unroll
  return nn.remat(layer_cls, policy=REMAT_POLICIES[policy], prevent_cse=not rolled_loop)


def layer_stack(
  layer_cls: type[nn.Module], num_layers: int, in_axes: tuple, unroll: bool
) -> type[nn.Module]:
  """`layer_cls` scanned `num_layers` times: params stacked [num_layers, ...] on the logical
  axis "layers", the carry threaded through, `in_axes` for the other arguments.

  unroll: emit the layers as straight-line code rather than a while loop (same params, same
  checkpoints). A rolled loop compiles in time independent of depth, but writes each saved
  residual into a zero-filled [num_layers, ...] buffer: 9% of the `small` CPU step
  (docs/training.md).
  """
  return nn.scan(
    layer_cls,
    variable_axes={"params": 0},
    split_rngs={"params": True},
    in_axes=in_axes,
    length=num_layers,
    metadata_params={nn.PARTITION_NAME: "layers"},
    unroll=num_layers if unroll else 1,
  )
