"""SigLIP vision encoder (BAGEL's NaViT-style SigLIP) in Flax linen.

Layout, matching transformers' `SiglipVisionModel` and BAGEL's `siglip_navit.py` (without the
pooling head, which BAGEL drops):

  patches [B, N, p*p*C] --Dense--> + position_embedding[position_ids] --> L x pre-LN block
  --> post_layernorm --> [B, N, D]

  block(x) = x + out_proj(MHA(layer_norm1(x)));  x + fc2(gelu_tanh(fc1(layer_norm2(x))))

Images of any size up to `image_size` are handled the NaViT way: a patch at grid cell (row, col)
takes the learned position `row * grid_side + col` of the full `grid_side x grid_side` table
(`grid_side = image_size // patch_size`, 70 for BAGEL's 980 / 14), so smaller images need no
interpolation. Rows of a batch may carry padding patches; `valid` excludes them as keys.

Patch features are ordered (kh, kw, C), which is what BAGEL's `patchify` produces (einsum
'chpwq->hwpqc') and what BAGEL's Linear patch embedding expects; a transformers Conv2d weight
[D, C, p, p] is permuted to that order on conversion (see `medq_jax.convert.siglip`). For NHWC
images this order is a plain reshape.

Param tree (scan_layers=True; the layer params carry a leading [num_layers] axis):
  embeddings/patch_embedding/{kernel [p*p*C, D], bias [D]}
  embeddings/position_embedding/embedding [grid_side**2, D]
  encoder/layers/{layer_norm1, self_attn/{q_proj,k_proj,v_proj,out_proj}, layer_norm2,
                  mlp/{fc1, fc2}}
  post_layernorm/{scale, bias}
With scan_layers=False the layers are `encoder/layers_{i}/...` without the leading axis.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from medq_jax.models.layers import layer_stack, logical_dense, remat_layer

Dtype = Any

ACT_AXES = ("act_batch", "act_len", "act_embed")


def _dense(features: int, axes: tuple[str, str], name: str, dtype: Dtype, param_dtype: Dtype):
  """The ViT's dense layer: `logical_dense` with a bias and flax's lecun-normal kernel."""
  return logical_dense(
    features, axes, use_bias=True, dtype=dtype, param_dtype=param_dtype, name=name, init="lecun"
  )


def _layer_norm(eps: float, name: str, dtype: Dtype, param_dtype: Dtype):
  return nn.LayerNorm(
    epsilon=eps,
    dtype=dtype,
    param_dtype=param_dtype,
    scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
    name=name,
  )


def image_to_patches(
  images: jax.Array, patch_size: int, grid_side: int
) -> tuple[jax.Array, jax.Array]:
  """Cuts NHWC images into flattened patches and their NaViT position ids.

  Args:
    images: [B, H, W, C] with H and W multiples of `patch_size`.
    patch_size: p.
    grid_side: side of the learned position table (image_size // patch_size).

  Returns:
    patches: [B, (H/p)*(W/p), p*p*C], row-major over patches, features in (kh, kw, C) order.
    position_ids: [B, (H/p)*(W/p)] int32, `row * grid_side + col`.
  """
  batch, height, width, channels = images.shape
  p = patch_size
  if height % p or width % p:
    raise ValueError(
      f"image_to_patches: image size {height}x{width} is not a multiple of patch_size={p}"
    )
  rows, cols = height // p, width // p
  if rows > grid_side or cols > grid_side:
    raise ValueError(
      f"image_to_patches: {rows}x{cols} patches exceed the {grid_side}x{grid_side} position grid"
    )
  patches = images.reshape(batch, rows, p, cols, p, channels)
  patches = jnp.transpose(patches, (0, 1, 3, 2, 4, 5)).reshape(batch, rows * cols, p * p * channels)
  ids = (np.arange(rows)[:, None] * grid_side + np.arange(cols)[None, :]).reshape(-1)
  position_ids = jnp.broadcast_to(jnp.asarray(ids, jnp.int32), (batch, rows * cols))
  return patches, position_ids


class SiglipAttention(nn.Module):
  """Bidirectional multi-head attention with biases. x: [B, N, D], key_mask: [B, N] bool."""

  config: ml_collections.ConfigDict
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    cfg = self.config
    batch, length, embed = x.shape
    head_dim = cfg.hidden_size // cfg.num_heads
    axes_in = ("vit_embed", "vit_heads_x_dim")

    def heads(name):
      y = _dense(cfg.hidden_size, axes_in, name, self.dtype, self.param_dtype)(x)
      return y.reshape(batch, length, cfg.num_heads, head_dim)

    q, k, v = heads("q_proj"), heads("k_proj"), heads("v_proj")
    mask = None if key_mask is None else key_mask[:, None, None, :]
    out = jax.nn.dot_product_attention(q, k, v, mask=mask)  # [B, N, H, hd]
    out = out.reshape(batch, length, cfg.hidden_size)
    return _dense(
      embed, ("vit_heads_x_dim", "vit_embed"), "out_proj", self.dtype, self.param_dtype
    )(out)


class SiglipMLP(nn.Module):
  """fc1 -> gelu (tanh approximation, = gelu_pytorch_tanh) -> fc2. x: [B, N, D]."""

  config: ml_collections.ConfigDict
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    h = _dense(
      cfg.intermediate_size, ("vit_embed", "vit_mlp"), "fc1", self.dtype, self.param_dtype
    )(x)
    h = nn.gelu(h, approximate=True)
    return _dense(cfg.hidden_size, ("vit_mlp", "vit_embed"), "fc2", self.dtype, self.param_dtype)(h)


class SiglipEncoderLayer(nn.Module):
  """One pre-LN block. Scan-compatible: (x [B, N, D], key_mask) -> (x, None)."""

  config: ml_collections.ConfigDict
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None):
    cfg = self.config
    h = _layer_norm(cfg.layer_norm_eps, "layer_norm1", self.dtype, self.param_dtype)(x)
    x = x + SiglipAttention(cfg, self.dtype, self.param_dtype, name="self_attn")(h, key_mask)
    h = _layer_norm(cfg.layer_norm_eps, "layer_norm2", self.dtype, self.param_dtype)(x)
    x = x + SiglipMLP(cfg, self.dtype, self.param_dtype, name="mlp")(h)
    x = nn.with_logical_constraint(x, ACT_AXES)
    return x, None


class SiglipEncoder(nn.Module):
  """The stack of `num_layers` blocks, scanned (params [num_layers, ...]) or unrolled."""

  config: ml_collections.ConfigDict
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  scan_layers: bool = True
  remat_policy: str = "none"
  scan_unroll: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    layer_cls = remat_layer(
      SiglipEncoderLayer, self.remat_policy, self.scan_layers, self.scan_unroll
    )
    args = (self.config, self.dtype, self.param_dtype)
    if self.scan_layers:
      stack = layer_stack(layer_cls, self.config.num_layers, (nn.broadcast,), self.scan_unroll)
      x, _ = stack(*args, name="layers")(x, key_mask)
    else:
      for index in range(self.config.num_layers):
        x, _ = layer_cls(*args, name=f"layers_{index}")(x, key_mask)
    return x


class SiglipEmbeddings(nn.Module):
  """Linear patch embedding + learned position embedding over the full position grid."""

  config: ml_collections.ConfigDict
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, patches: jax.Array, position_ids: jax.Array) -> jax.Array:
    cfg = self.config
    grid_side = cfg.image_size // cfg.patch_size
    x = _dense(
      cfg.hidden_size, ("vit_patch", "vit_embed"), "patch_embedding", self.dtype, self.param_dtype
    )(patches)
    positions = nn.Embed(
      grid_side**2,
      cfg.hidden_size,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      embedding_init=nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("vit_pos", "vit_embed")
      ),
      name="position_embedding",
    )(position_ids)
    return x + positions


class SiglipVisionEncoder(nn.Module):
  """SigLIP vision tower without the pooling head.

  Attributes:
    config: hidden_size, intermediate_size, num_layers, num_heads, patch_size, image_size (the
      largest image side; sets the position grid), num_channels, layer_norm_eps.
    dtype: compute dtype; param_dtype: storage dtype of the parameters.
    scan_layers: scan one stacked layer (compile time independent of depth).
    remat_policy: "none", "full" or "dots_with_no_batch_dims_saveable".
    scan_unroll: with scan_layers, the stacked layers as straight-line code (`layer_stack`).
  """

  config: ml_collections.ConfigDict
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  scan_layers: bool = True
  remat_policy: str = "none"
  scan_unroll: bool = False

  @property
  def grid_side(self) -> int:
    return self.config.image_size // self.config.patch_size

  @nn.compact
  def __call__(
    self, patches: jax.Array, position_ids: jax.Array, valid: jax.Array | None = None
  ) -> jax.Array:
    """Encodes patch sequences.

    Args:
      patches: [B, N, p*p*C] in (kh, kw, C) feature order (see `image_to_patches`).
      position_ids: [B, N] int, row * grid_side + col.
      valid: optional [B, N] bool; False marks padding patches, which no token attends to.

    Returns:
      [B, N, hidden_size] after post_layernorm (`last_hidden_state`), in `dtype`.
    """
    cfg = self.config
    expected = cfg.num_channels * cfg.patch_size**2
    if patches.shape[-1] != expected:
      raise ValueError(
        f"patches: expected last dim num_channels*patch_size**2={expected}, got {patches.shape}"
      )
    embeddings = SiglipEmbeddings(cfg, self.dtype, self.param_dtype, name="embeddings")
    x = embeddings(patches, position_ids)
    x = nn.with_logical_constraint(x, ACT_AXES)
    x = SiglipEncoder(
      cfg,
      self.dtype,
      self.param_dtype,
      self.scan_layers,
      self.remat_policy,
      self.scan_unroll,
      name="encoder",
    )(x, valid)
    return _layer_norm(cfg.layer_norm_eps, "post_layernorm", self.dtype, self.param_dtype)(x)
