"""FLUX autoencoder (the VAE of BAGEL / MedQ-UNI) in Flax linen, NHWC.

Layout follows black-forest-labs/flux `modules/autoencoder.py`, and the Flax param paths mirror
its checkpoint (`ae.safetensors`) names with list indices folded into module names, so
``encoder.down.1.block.0.conv1.weight`` lives at ``encoder/down_1/block_0/conv1/kernel``:

  encoder: conv_in -> down_{i} (i < len(ch_mult)): block_{j} (j < num_res_blocks) ResnetBlocks,
           downsample/conv (all but the last level) -> mid/{block_1, attn_1, block_2}
           -> norm_out -> swish -> conv_out [.., 2*z_channels] = (mean, logvar)
  decoder: conv_in -> mid/{block_1, attn_1, block_2} -> up_{i} for i = last..0:
           block_{j} (j <= num_res_blocks), upsample/conv (i > 0) -> norm_out -> swish -> conv_out

ResnetBlock: norm1, conv1, norm2, conv2 (+ nin_shortcut 1x1 when channels change).
AttnBlock: norm, q, k, v, proj_out (1x1 convs), single-head attention over h*w positions.
GroupNorm(norm_groups, eps=1e-6). Downsampling factor = 2**(len(ch_mult)-1).

Latents are scaled the FLUX way: `encode` returns scale_factor * (z - shift_factor), `decode`
undoes it. `patchify_latents` / `unpatchify_latents` give BAGEL's latent token order.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from medq_jax.models import attention as attention_lib
from medq_jax.models.chunked_attention import chunked_attention

Dtype = Any

CONV_AXES = ("conv_h", "conv_w", "vae_in", "vae_out")
CHANNEL_AXES = ("vae_channels",)


def downsample_factor(config: ml_collections.ConfigDict) -> int:
  """Spatial reduction of the encoder: 2**(len(ch_mult) - 1), 8 for FLUX."""
  return 2 ** (len(config.ch_mult) - 1)


def _conv(
  features: int,
  kernel: int,
  name: str,
  dtype: Dtype,
  param_dtype: Dtype,
  *,
  stride: int = 1,
  padding: Any = None,
):
  pad = kernel // 2 if padding is None else padding
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(stride, stride),
    padding=((pad, pad), (pad, pad)) if isinstance(pad, int) else pad,
    dtype=dtype,
    param_dtype=param_dtype,
    kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), CONV_AXES),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), CHANNEL_AXES),
    name=name,
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _group_sum(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """x [B, N, G, C/G] (of `shape`) -> [B, 1, G, 1]: summed over positions ([B, C], contiguous
  along C), then over each group's channels. The barrier keeps XLA from merging the two
  reductions back into the one strided reduction over (1, 3), 3x slower on its CPU backend."""
  per_channel = jax.lax.optimization_barrier(jnp.sum(x, axis=1))
  return jnp.sum(per_channel, axis=-1)[:, None, :, None]


def _group_sum_fwd(x, shape):
  return _group_sum(x, shape), None


def _group_sum_bwd(shape, _, g):
  return (jnp.broadcast_to(g, shape),)


_group_sum.defvjp(_group_sum_fwd, _group_sum_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _group_expand(m: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """[B, 1, G, 1] broadcast to `shape`; its gradient is `_group_sum`, not autodiff's strided
  reduction."""
  return jnp.broadcast_to(m, shape)


def _group_expand_fwd(m, shape):
  return _group_expand(m, shape), None


def _group_expand_bwd(shape, _, g):
  return (_group_sum(g, shape),)


_group_expand.defvjp(_group_expand_fwd, _group_expand_bwd)


class GroupNorm(nn.Module):
  """GroupNorm over NHWC as PyTorch's (two-pass variance, eps inside the root, per-channel
  affine), with flax's parameter names (`scale`, `bias` [C]) so FLUX checkpoints convert as
  before.

  Every group statistic, and its gradient, reduces over positions first, then over each
  group's channels (`_group_sum`): flax's `nn.GroupNorm` reduces [B, H, W, G, C/G] over
  (1, 2, 4) in one strided pass, which XLA's CPU backend ran at under 2 GB/s, 8% of the `small`
  step (docs/training.md).
  """

  num_groups: int
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    if channels % self.num_groups:
      raise ValueError(
        f"GroupNorm {self.name}: {channels} channels do not split into {self.num_groups} groups"
      )
    param = lambda name, init: self.param(
      name, nn.with_logical_partitioning(init, CHANNEL_AXES), (channels,), self.param_dtype
    )
    scale = param("scale", nn.initializers.ones_init())
    bias = param("bias", nn.initializers.zeros_init())
    batch, group_size = x.shape[0], channels // self.num_groups
    grouped = x.astype(jnp.float32).reshape(batch, -1, self.num_groups, group_size)
    count = grouped.shape[1] * group_size
    shape = grouped.shape
    centred = grouped - _group_expand(_group_sum(grouped, shape) / count, shape)
    inv = jax.lax.rsqrt(_group_sum(centred * centred, shape) / count + self.epsilon)
    affine = lambda p: p.astype(jnp.float32).reshape(self.num_groups, group_size)
    out = centred * (inv * affine(scale)) + affine(bias)
    return out.reshape(x.shape).astype(self.dtype)


def _group_norm(groups: int, name: str, dtype: Dtype, param_dtype: Dtype):
  return GroupNorm(groups, 1e-6, dtype, param_dtype, name=name)


class ResnetBlock(nn.Module):
  """x [B, H, W, Cin] -> [B, H, W, out_channels]."""

  out_channels: int
  norm_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    args = (self.dtype, self.param_dtype)
    h = nn.swish(_group_norm(self.norm_groups, "norm1", *args)(x))
    h = _conv(self.out_channels, 3, "conv1", *args)(h)
    h = nn.swish(_group_norm(self.norm_groups, "norm2", *args)(h))
    h = _conv(self.out_channels, 3, "conv2", *args)(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, "nin_shortcut", *args)(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all H*W positions, residual. x: [B, H, W, C].

  attention_impl: "auto" is the chunked kernel on a single CPU device (`attention.resolve_impl`;
  the 1024-position attention of a 64-px image at 2x downsampling is its largest tensor),
  else `jax.nn.dot_product_attention` ("xla"; what `profiling.step_flops` counts)."""

  norm_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    args = (self.dtype, self.param_dtype)
    batch, height, width, channels = x.shape
    h = _group_norm(self.norm_groups, "norm", *args)(x)
    q, k, v = (
      _conv(channels, 1, name, *args)(h).reshape(batch, height * width, 1, channels)
      for name in ("q", "k", "v")
    )
    if attention_lib.resolve_impl(self.attention_impl, height * width) == "chunked":
      h = chunked_attention(q, k, v, None)
    else:
      h = jax.nn.dot_product_attention(q, k, v)
    h = h.reshape(batch, height, width, channels)
    return x + _conv(channels, 1, "proj_out", *args)(h)


class Downsample(nn.Module):
  """Zero-pad bottom/right by one, then 3x3 conv stride 2: [B, H, W, C] -> [B, H/2, W/2, C]."""

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return _conv(x.shape[-1], 3, "conv", self.dtype, self.param_dtype, stride=2, padding=0)(x)


class Upsample(nn.Module):
  """Nearest 2x then 3x3 conv: [B, H, W, C] -> [B, 2H, 2W, C]."""

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(x.shape[-1], 3, "conv", self.dtype, self.param_dtype)(x)


class MidBlock(nn.Module):
  """block_1 -> attn_1 -> block_2 at constant width."""

  norm_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    args = (self.norm_groups, self.dtype, self.param_dtype)
    x = ResnetBlock(x.shape[-1], *args, name="block_1")(x)
    x = AttnBlock(*args, self.attention_impl, name="attn_1")(x)
    return ResnetBlock(x.shape[-1], *args, name="block_2")(x)


class ResLevel(nn.Module):
  """`num_blocks` ResnetBlocks (block_{j}), then an optional resampling conv named as FLUX names
  it: `resample='downsample'` (encoder levels but the last), `'upsample'` (decoder levels but 0)."""

  out_channels: int
  num_blocks: int
  resample: str | None
  norm_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat_blocks: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    block_cls = nn.remat(ResnetBlock) if self.remat_blocks else ResnetBlock
    for index in range(self.num_blocks):
      x = block_cls(
        self.out_channels, self.norm_groups, self.dtype, self.param_dtype, name=f"block_{index}"
      )(x)
    if self.resample == "downsample":
      x = Downsample(self.dtype, self.param_dtype, name="downsample")(x)
    elif self.resample == "upsample":
      x = Upsample(self.dtype, self.param_dtype, name="upsample")(x)
    return x


class Encoder(nn.Module):
  """images [B, H, W, in_channels] -> moments [B, H/f, W/f, 2*z_channels] = concat(mean, logvar)."""

  config: ml_collections.ConfigDict
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat_blocks: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    args = (self.dtype, self.param_dtype)
    h = _conv(cfg.ch, 3, "conv_in", *args)(x.astype(self.dtype))
    last = len(cfg.ch_mult) - 1
    for level, mult in enumerate(cfg.ch_mult):
      h = ResLevel(
        cfg.ch * mult,
        cfg.num_res_blocks,
        "downsample" if level != last else None,
        cfg.norm_groups,
        *args,
        self.remat_blocks,
        name=f"down_{level}",
      )(h)
    h = MidBlock(cfg.norm_groups, *args, cfg.get("attention_impl", "auto"), name="mid")(h)
    h = nn.swish(_group_norm(cfg.norm_groups, "norm_out", *args)(h))
    return _conv(2 * cfg.z_channels, 3, "conv_out", *args)(h)


class Decoder(nn.Module):
  """z [B, h, w, z_channels] (unscaled) -> images [B, h*f, w*f, out_channels]."""

  config: ml_collections.ConfigDict
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat_blocks: bool = False

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    cfg = self.config
    args = (self.dtype, self.param_dtype)
    h = _conv(cfg.ch * cfg.ch_mult[-1], 3, "conv_in", *args)(z.astype(self.dtype))
    h = MidBlock(cfg.norm_groups, *args, cfg.get("attention_impl", "auto"), name="mid")(h)
    for level in reversed(range(len(cfg.ch_mult))):
      h = ResLevel(
        cfg.ch * cfg.ch_mult[level],
        cfg.num_res_blocks + 1,
        "upsample" if level != 0 else None,
        cfg.norm_groups,
        *args,
        self.remat_blocks,
        name=f"up_{level}",
      )(h)
    h = nn.swish(_group_norm(cfg.norm_groups, "norm_out", *args)(h))
    return _conv(cfg.out_channels, 3, "conv_out", *args)(h)


class FluxAutoEncoder(nn.Module):
  """FLUX VAE: `encode` images to scaled latents, `decode` them back.

  Attributes:
    config: in_channels, out_channels, ch, ch_mult, num_res_blocks, z_channels, scale_factor,
      shift_factor, norm_groups.
    dtype / param_dtype: compute and storage dtypes.
    remat_blocks: rematerialise each ResnetBlock (memory for gradients through the decoder).

  Use through `apply(..., method=FluxAutoEncoder.encode)` etc.; `init` on images builds both
  halves. Param tree: {'encoder': ..., 'decoder': ...}.
  """

  config: ml_collections.ConfigDict
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat_blocks: bool = False

  def setup(self):
    args = (self.config, self.dtype, self.param_dtype, self.remat_blocks)
    self.encoder = Encoder(*args)
    self.decoder = Decoder(*args)

  def _check_spatial(self, x: jax.Array, what: str, factor: int):
    if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(
        f"{what}: expected [B, H, W, C] with H, W multiples of {factor}, got {x.shape}"
      )

  def encode_moments(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """images [B, H, W, in_channels] in [-1, 1] -> (mean, logvar), each [B, H/f, W/f, z], unscaled."""
    self._check_spatial(images, "images", downsample_factor(self.config))
    moments = self.encoder(images)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, logvar

  def encode(self, images: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """images [B, H, W, 3] in [-1, 1] -> latents [B, H/f, W/f, z] = scale * (z - shift).

    z is a posterior sample when `rng` is given, the posterior mean (mode) otherwise.
    """
    mean, logvar = self.encode_moments(images)
    z = mean
    if rng is not None:
      noise = jax.random.normal(rng, mean.shape, jnp.float32).astype(mean.dtype)
      z = mean + jnp.exp(0.5 * logvar) * noise
    return self.config.scale_factor * (z - self.config.shift_factor)

  def decode(self, latents: jax.Array) -> jax.Array:
    """latents [B, h, w, z] (scaled as `encode` returns them) -> images [B, h*f, w*f, 3]."""
    if latents.ndim != 4 or latents.shape[-1] != self.config.z_channels:
      raise ValueError(
        f"latents: expected [B, h, w, {self.config.z_channels}], got {latents.shape}"
      )
    z = latents / self.config.scale_factor + self.config.shift_factor
    return self.decoder(z)

  def __call__(self, images: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """Reconstruction decode(encode(images)); used by `init` to create all params."""
    return self.decode(self.encode(images, rng))


def patchify_latents(latents: jax.Array, p: int = 2) -> jax.Array:
  """[B, h, w, C] -> tokens [B, (h/p)*(w/p), p*p*C] in BAGEL's order.

  Tokens are row-major over the (h/p, w/p) grid; features are ordered (row-in-patch,
  col-in-patch, channel), as BAGEL's ``einsum('chpwq->hwpqc')`` on a [C, h, w] latent.
  """
  batch, height, width, channels = latents.shape
  if height % p or width % p:
    raise ValueError(f"patchify_latents: latent size {height}x{width} is not divisible by p={p}")
  x = latents.reshape(batch, height // p, p, width // p, p, channels)
  x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
  return x.reshape(batch, (height // p) * (width // p), p * p * channels)


def unpatchify_latents(tokens: jax.Array, h: int, w: int, p: int = 2) -> jax.Array:
  """Inverse of `patchify_latents`: tokens [B, (h/p)*(w/p), p*p*C] -> latents [B, h, w, C]."""
  if h % p or w % p:
    raise ValueError(f"unpatchify_latents: latent size {h}x{w} is not divisible by p={p}")
  batch, length, features = tokens.shape
  rows, cols = h // p, w // p
  if length != rows * cols or features % (p * p):
    raise ValueError(
      f"unpatchify_latents: tokens {tokens.shape} do not fit a {h}x{w} latent with p={p}"
    )
  channels = features // (p * p)
  x = tokens.reshape(batch, rows, cols, p, p, channels)
  x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
  return x.reshape(batch, h, w, channels)
