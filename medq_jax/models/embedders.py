"""Input embedders around the decoder: the ViT->LLM connector, the DiT timestep embedder, and
fixed 2-D sin-cos position embeddings for ViT patches and VAE-latent patches (BAGEL layout).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from medq_jax.models.layers import logical_dense, sincos_2d

Dtype = Any


class MLPConnector(nn.Module):
  """ViT features -> LLM width: fc1, GELU (tanh approximation), fc2."""

  hidden_size: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype)
    x = logical_dense(self.hidden_size, ("vit_embed", "embed"), name="fc1", **kw)(x)
    x = nn.gelu(x, approximate=True)
    return logical_dense(self.hidden_size, ("embed", "embed_out"), name="fc2", **kw)(x)


def timestep_frequencies(t, dim: int, max_period: float = 10000.0):
  """DiT sinusoidal features [..., dim] = concat(cos, sin) of t * freqs; t in [0, 1]."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TimestepEmbedder(nn.Module):
  """DiT timestep embedder: sinusoidal features -> Linear -> SiLU -> Linear (`mlp.0`, `mlp.2`)."""

  hidden_size: int
  freq_dim: int = 256
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t):
    kw = dict(use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype)
    x = timestep_frequencies(t, self.freq_dim).astype(self.dtype)
    x = logical_dense(self.hidden_size, ("timestep_freq", "embed"), name="mlp_0", **kw)(x)
    x = nn.silu(x)
    return logical_dense(self.hidden_size, ("embed", "embed_out"), name="mlp_2", **kw)(x)


class FixedPositionEmbedding(nn.Module):
  """Non-trainable 2-D sin-cos table [grid_side**2, hidden] looked up by flattened (h, w) ids."""

  grid_side: int
  hidden_size: int

  def __call__(self, position_ids):
    table = jnp.asarray(sincos_2d(self.hidden_size, self.grid_side))
    return jnp.take(table, position_ids, axis=0)
