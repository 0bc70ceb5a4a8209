"""Qwen2-style Mixture-of-Transformers decoder over two dense streams.

The und stream [B, Lu, D] (text and ViT tokens) and the gen stream [B, Lg, D] (VAE-latent tokens)
stay two arrays through every layer: each expert's norms, projections and FFN apply to its own
stream with plain dense matmuls, and only attention joins them (und first) into one sequence.
Routing costs the joins around attention, never a per-token gather or scatter nor a slice of a
joint residual stream (a slice, its padded gradient and the re-join were copies of the whole
stream per layer, docs/model.md).

expert_scope:
  "ffn": shared q/k/v/o, q/k norms and layer norms; separate FFNs (the MedQ-UNI paper's form).
  "all": every per-token weight separate (BAGEL's MoT; needed to load UniMedVL/BAGEL weights).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from medq_jax.models import attention as attention_lib
from medq_jax.models.kv_cache import DecoderCache, LayerCache
from medq_jax.models.layers import (
  RMSNorm,
  apply_rope,
  constrain,
  layer_stack,
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


def _join(parts: list[jax.Array]) -> jax.Array:
  """The streams' arrays joined along the length (und first); one stream: itself, no copy."""
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)


class JointSelfAttention(nn.Module):
  """Grouped-query attention with q/k/v bias, optional QK-norm and RoPE over the two streams
  joined (und first): each stream projected by its expert's weights ('all') or both by the
  shared ones ('ffn')."""

  config: ml_collections.ConfigDict
  expert_scope: str
  attention_impl: str
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
  def __call__(self, xu, xg, ids: attention_lib.TokenIds, rope, cache: LayerCache | None = None):
    """Returns ((und output [B, Lu, D], gen output [B, Lg, D]), (k, v) of these tokens after
    RoPE, each [B, Lu + Lg, KV, Dh]). A stream with no tokens is returned as it came.

    With `cache`, the queries also attend to the cached keys/values (earlier tokens of the same
    sequences, already rotated), which are read, never written, here.
    """
    per_expert = self.expert_scope == "all"
    streams = [(x, suffix) for x, suffix in ((xu, ""), (xg, GEN)) if x.shape[1]]
    if per_expert:
      q, k, v = map(_join, zip(*(self._project(x, suffix) for x, suffix in streams)))
    else:
      q, k, v = self._project(_join([x for x, _ in streams]), "")
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
    if not per_expert:  # one shared o_proj over the joined output, before the split
      out = self._out(out, "")
    outs = jnp.split(out, [xu.shape[1]], axis=1) if len(streams) == 2 else [out]
    if per_expert:  # each part through its expert's o_proj
      outs = [self._out(part, suffix) for part, (_, suffix) in zip(outs, streams)]
    outs = iter(outs)
    return tuple(next(outs) if x.shape[1] else x for x in (xu, xg)), (k, v)


class MoTDecoderLayer(nn.Module):
  """One pre-norm decoder layer over the two residual streams (und [B, Lu, D], gen [B, Lg, D]).

  Each expert's norms and FFN apply to its own stream (with expert_scope='ffn' the norms are
  shared); attention joins the streams. Scanned over layers with the pair as its carry.
  """

  config: ml_collections.ConfigDict
  expert_scope: str
  attention_impl: str
  dtype: Dtype
  param_dtype: Dtype
  return_kv: bool = False

  def _per_stream(self, und_fn, gen_fn, hu, hg):
    """(und_fn(hu), gen_fn(hg)), a stream with no tokens passed through (its module unused)."""
    return (und_fn(hu) if hu.shape[1] else hu, gen_fn(hg) if hg.shape[1] else hg)

  def _norms(self, name, hu, hg):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    und_norm = RMSNorm(self.config.rms_norm_eps, name=name, **kw)
    gen_norm = (
      und_norm
      if self.expert_scope == "ffn"
      else RMSNorm(self.config.rms_norm_eps, name=name + GEN, **kw)
    )
    return self._per_stream(und_norm, gen_norm, hu, hg)

  @nn.compact
  def __call__(self, h, ids, rope, cache_ids=None, cache_visible=None, cache_kv=None):
    """h: (und stream, gen stream). Returns (h, (k, v) of these tokens when `return_kv`, else
    None); with a cache (its ids and visibility shared by all layers, this layer's (k, v)
    scanned) attends to it too."""
    hu, hg = h
    cache = None if cache_kv is None else LayerCache(*cache_kv, cache_ids, cache_visible)
    (au, ag), kv = JointSelfAttention(
      self.config,
      self.expert_scope,
      self.attention_impl,
      self.dtype,
      self.param_dtype,
      name="self_attn",
    )(*self._norms("input_layernorm", hu, hg), ids, rope, cache)
    hu, hg = hu + au, hg + ag
    mlp = lambda name: ExpertMLP(self.config, self.dtype, self.param_dtype, name=name)
    fu, fg = self._per_stream(
      mlp("mlp"), mlp("mlp" + GEN), *self._norms("post_attention_layernorm", hu, hg)
    )
    hu, hg = hu + fu, hg + fg
    return (constrain(hu, _STREAM_AXES), constrain(hg, _STREAM_AXES)), (
      kv if self.return_kv else None
    )


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
  scan_unroll: bool = False  # with scan_layers: straight-line code, same params (`layer_stack`)

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
    layer_cls = remat_layer(MoTDecoderLayer, self.remat_policy, self.scan_layers, self.scan_unroll)
    args = (cfg, self.expert_scope, self.attention_impl, self.dtype, self.param_dtype, return_kv)
    h = tuple(constrain(x.astype(self.dtype), _STREAM_AXES) for x in (und_h, gen_h))
    cache_args = (
      (None, None, None) if cache is None else (cache.ids, cache.visible, (cache.k, cache.v))
    )
    if self.scan_layers:
      in_axes = (nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, 0)
      stack = layer_stack(layer_cls, cfg.num_layers, in_axes, self.scan_unroll)
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
    und_norm = norm("")
    gen_norm = und_norm if self.expert_scope == "ffn" else norm(GEN)
    # Both applied even when a stream is empty, so both experts' final norms always exist.
    h_und, h_gen = und_norm(h[0]), gen_norm(h[1])
    return (h_und, h_gen, kv) if return_kv else (h_und, h_gen)
