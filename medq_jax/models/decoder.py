"""Qwen2-style Mixture-of-Transformers decoder over two dense streams.

The und stream [B, Lu, D] (text and ViT tokens) and the gen stream [B, Lg, D] (VAE-latent tokens)
are joined once into one residual stream [B, Lu + Lg, D] (und first); each layer applies the und
expert's weights to the static und slice and the gen expert's to the gen slice with plain dense
matmuls, and runs one joint attention over everything. Routing costs a concat per split layer
(only the FFN with expert_scope='ffn'), never a per-token gather or scatter.

expert_scope:
  "ffn": shared q/k/v/o, q/k norms and layer norms; separate FFNs (the MedQ-UNI paper's form).
  "all": every per-token weight separate (BAGEL's MoT; needed to load UniMedVL/BAGEL weights).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from medq_jax.models import attention as attention_lib
from medq_jax.models.kv_cache import DecoderCache, LayerCache
from medq_jax.models.layers import (
  RMSNorm,
  apply_rope,
  constrain,
  logical_dense,
  remat_layer,
  rope_tables,
)
from medq_jax.types import GEN_SUFFIX as GEN

Dtype = Any

_STREAM_AXES = ("act_batch", "act_len", "act_embed")


class ExpertMLP(nn.Module):
  """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

  config: ml_collections.ConfigDict
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dense = lambda f, axes, name: logical_dense(
      f, axes, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, name=name
    )
    gate = dense(cfg.intermediate_size, ("embed", "mlp"), "gate_proj")(x)
    up = dense(cfg.intermediate_size, ("embed", "mlp"), "up_proj")(x)
    hidden = constrain(nn.silu(gate) * up, ("act_batch", "act_len", "act_mlp"))
    return dense(cfg.hidden_size, ("mlp", "embed"), "down_proj")(hidden)


class JointSelfAttention(nn.Module):
  """Grouped-query attention with q/k/v bias, optional QK-norm and RoPE over the joint stream.

  x: [B, L, D] with the und tokens first (`und_len` of them) and the gen tokens after.
  """

  config: ml_collections.ConfigDict
  expert_scope: str
  attention_impl: str
  und_len: int
  dtype: Dtype
  param_dtype: Dtype

  def _project(self, x, suffix: str):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    q = logical_dense(
      cfg.num_heads * cfg.head_dim, ("embed", "heads"), use_bias=True, name="q_proj" + suffix, **kw
    )(x)
    k = logical_dense(
      cfg.num_kv_heads * cfg.head_dim,
      ("embed", "kv_heads"),
      use_bias=True,
      name="k_proj" + suffix,
      **kw,
    )(x)
    v = logical_dense(
      cfg.num_kv_heads * cfg.head_dim,
      ("embed", "kv_heads"),
      use_bias=True,
      name="v_proj" + suffix,
      **kw,
    )(x)
    batch, length = x.shape[:2]
    q = q.reshape(batch, length, cfg.num_heads, cfg.head_dim)
    k = k.reshape(batch, length, cfg.num_kv_heads, cfg.head_dim)
    v = v.reshape(batch, length, cfg.num_kv_heads, cfg.head_dim)
    if cfg.qk_norm:
      norm = lambda name: RMSNorm(cfg.rms_norm_eps, axis_name="head_dim", name=name + suffix, **kw)
      q, k = norm("q_norm")(q), norm("k_norm")(k)
    return q, k, v

  def _out(self, o, suffix: str):
    cfg = self.config
    o = o.reshape(*o.shape[:2], cfg.num_heads * cfg.head_dim)
    return logical_dense(
      cfg.hidden_size,
      ("heads", "embed"),
      use_bias=False,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="o_proj" + suffix,
    )(o)

  @nn.compact
  def __call__(self, x, ids: attention_lib.TokenIds, rope, cache: LayerCache | None = None):
    """Returns (output [B, L, D], (k, v) of these tokens after RoPE, each [B, L, KV, Dh]).

    With `cache`, the queries also attend to the cached keys/values (earlier tokens of the same
    sequences, already rotated), which are read, never written, here.
    """
    split = self.expert_scope == "all" and 0 < self.und_len < x.shape[1]
    if split:
      (qu, ku, vu) = self._project(x[:, : self.und_len], "")
      (qg, kg, vg) = self._project(x[:, self.und_len :], GEN)
      q, k, v = (jnp.concatenate(pair, axis=1) for pair in ((qu, qg), (ku, kg), (vu, vg)))
    else:
      q, k, v = self._project(x, GEN if self.expert_scope == "all" and self.und_len == 0 else "")
    cos, sin = rope
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    q = constrain(q, ("act_batch", "act_len", "act_heads", "act_head_dim"))
    k = constrain(k, ("act_batch", "act_len", "act_kv_heads", "act_head_dim"))
    if cache is None:
      out = attention_lib.attention(q, k, v, ids, ids, self.attention_impl)
    else:
      visible = jnp.concatenate([cache.visible, jnp.ones(ids.sample.shape, jnp.bool_)], axis=1)
      out = attention_lib.attention(
        q,
        jnp.concatenate([cache.k.astype(k.dtype), k], axis=1),
        jnp.concatenate([cache.v.astype(v.dtype), v], axis=1),
        ids,
        attention_lib.TokenIds.concat(cache.ids, ids),
        self.attention_impl,
        kv_visible=visible,
      )
    if split:
      out = jnp.concatenate(
        [self._out(out[:, : self.und_len], ""), self._out(out[:, self.und_len :], GEN)], axis=1
      )
    else:
      out = self._out(out, GEN if self.expert_scope == "all" and self.und_len == 0 else "")
    return out, (k, v)


class MoTDecoderLayer(nn.Module):
  """One pre-norm decoder layer over the joint residual stream [B, L, D] (und tokens first).

  Per-expert weights apply to static slices of the stream; with expert_scope='ffn' only the FFN
  is split, so routing costs one concat per layer. Scanned over layers.
  """

  config: ml_collections.ConfigDict
  expert_scope: str
  attention_impl: str
  und_len: int
  dtype: Dtype
  param_dtype: Dtype
  return_kv: bool = False

  def _norm(self, name):
    return RMSNorm(
      self.config.rms_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name=name
    )

  def _per_expert(self, x, und_fn, gen_fn):
    """und_fn on the und slice, gen_fn on the gen slice, rejoined (no gen tokens: und only)."""
    if self.und_len >= x.shape[1]:
      return und_fn(x)
    if self.und_len == 0:
      return gen_fn(x)
    return jnp.concatenate([und_fn(x[:, : self.und_len]), gen_fn(x[:, self.und_len :])], axis=1)

  def _norm_both(self, name, h):
    if self.expert_scope == "ffn":
      return self._norm(name)(h)
    return self._per_expert(h, self._norm(name), self._norm(name + GEN))

  @nn.compact
  def __call__(self, h, ids, rope, cache_ids=None, cache_visible=None, cache_kv=None):
    """Returns (h, (k, v) of these tokens when `return_kv`, else None); with a cache (its ids
    and visibility shared by all layers, this layer's (k, v) scanned) attends to it too."""
    x = self._norm_both("input_layernorm", h)
    cache = None if cache_kv is None else LayerCache(*cache_kv, cache_ids, cache_visible)
    attn_out, kv = JointSelfAttention(
      self.config,
      self.expert_scope,
      self.attention_impl,
      self.und_len,
      self.dtype,
      self.param_dtype,
      name="self_attn",
    )(x, ids, rope, cache)
    h = h + attn_out
    x = self._norm_both("post_attention_layernorm", h)
    mlp = lambda name: ExpertMLP(self.config, self.dtype, self.param_dtype, name=name)
    und_mlp, gen_mlp = mlp("mlp"), mlp("mlp" + GEN)
    if 0 < self.und_len < h.shape[1]:
      # Add each expert's output into its slice of the residual in place (no concat copy).
      h = h.at[:, : self.und_len].add(und_mlp(x[:, : self.und_len]))
      h = h.at[:, self.und_len :].add(gen_mlp(x[:, self.und_len :]))
    else:
      h = h + self._per_expert(x, und_mlp, gen_mlp)
    return constrain(h, _STREAM_AXES), (kv if self.return_kv else None)


class MoTDecoder(nn.Module):
  """Stack of `MoTDecoderLayer`s (nn.scan over layers) plus final norms.

  Inputs: und_h [B, Lu, D], gen_h [B, Lg, D] (Lg may be 0), und_ids/gen_ids `TokenIds` [B, L*],
  und_pos/gen_pos RoPE positions [B, L*]. Returns the final-normed (und_h, gen_h).
  """

  config: ml_collections.ConfigDict
  expert_scope: str = "ffn"
  attention_impl: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  scan_layers: bool = True
  remat_policy: str = "none"

  @nn.compact
  def __call__(
    self,
    und_h,
    gen_h,
    und_ids,
    gen_ids,
    und_pos,
    gen_pos,
    cache: DecoderCache | None = None,
    return_kv: bool = False,
  ):
    cfg = self.config
    ids = attention_lib.TokenIds.concat(und_ids, gen_ids)
    rope = rope_tables(jnp.concatenate([und_pos, gen_pos], axis=1), cfg.head_dim, cfg.rope_theta)
    layer_cls = remat_layer(MoTDecoderLayer, self.remat_policy, self.scan_layers)
    und_len = und_h.shape[1]
    args = (
      cfg,
      self.expert_scope,
      self.attention_impl,
      und_len,
      self.dtype,
      self.param_dtype,
      return_kv,
    )
    h = constrain(
      jnp.concatenate([und_h.astype(self.dtype), gen_h.astype(self.dtype)], axis=1), _STREAM_AXES
    )
    cache_args = (
      (None, None, None) if cache is None else (cache.ids, cache.visible, (cache.k, cache.v))
    )
    if self.scan_layers:
      stack = nn.scan(
        layer_cls,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, 0),
        length=cfg.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
      )
      h, kv = stack(*args, name="layers")(h, ids, rope, *cache_args)
    else:
      kvs = []
      for index in range(cfg.num_layers):
        layer_kv = None if cache is None else (cache.k[index], cache.v[index])
        h, layer_out = layer_cls(*args, name=f"layers_{index}")(
          h, ids, rope, *cache_args[:2], layer_kv
        )
        kvs.append(layer_out)
      kv = tuple(jnp.stack(parts) for parts in zip(*kvs)) if return_kv else None
    norm = lambda suffix: RMSNorm(
      cfg.rms_norm_eps, self.dtype, self.param_dtype, name="norm" + suffix
    )
    if self.expert_scope == "ffn":
      h_und, h_gen = jnp.split(norm("")(h), [und_len], axis=1)
    else:  # one final norm per expert (both created even when a stream is empty)
      h_und, h_gen = norm("")(h[:, :und_len]), norm(GEN)(h[:, und_len:])
    return (h_und, h_gen, kv) if return_kv else (h_und, h_gen)
