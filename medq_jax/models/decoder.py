"""Qwen2-style Mixture-of-Transformers decoder over two dense streams.

The und stream [B, Lu, D] (text and ViT tokens) and the gen stream [B, Lg, D] (VAE-latent tokens)
each go through their own expert's weights with plain dense matmuls; keys and values of both are
concatenated for one joint attention per layer, whose output is split back. Routing therefore
costs a concat and a split, never a per-token gather or scatter.

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
from medq_jax.models.layers import RMSNorm, apply_rope, constrain, logical_dense, rope_tables

Dtype = Any
GEN = "_moe_gen"  # BAGEL's suffix for the generation expert's copy of a weight

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}

_STREAM_AXES = ("act_batch", "act_len", "act_embed")


class ExpertMLP(nn.Module):
  """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

  config: ml_collections.ConfigDict
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dense = lambda f, axes, name: logical_dense(f, axes, use_bias=False, dtype=self.dtype,
                                                param_dtype=self.param_dtype, name=name)
    gate = dense(cfg.intermediate_size, ("embed", "mlp"), "gate_proj")(x)
    up = dense(cfg.intermediate_size, ("embed", "mlp"), "up_proj")(x)
    hidden = constrain(nn.silu(gate) * up, ("act_batch", "act_len", "act_mlp"))
    return dense(cfg.hidden_size, ("mlp", "embed"), "down_proj")(hidden)


class JointSelfAttention(nn.Module):
  """Grouped-query attention with q/k/v bias, optional QK-norm and RoPE, over both streams."""

  config: ml_collections.ConfigDict
  expert_scope: str
  attention_impl: str
  dtype: Dtype
  param_dtype: Dtype

  def _project(self, x, suffix: str):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    q = logical_dense(cfg.num_heads * cfg.head_dim, ("embed", "heads"), use_bias=True,
                      name="q_proj" + suffix, **kw)(x)
    k = logical_dense(cfg.num_kv_heads * cfg.head_dim, ("embed", "kv_heads"), use_bias=True,
                      name="k_proj" + suffix, **kw)(x)
    v = logical_dense(cfg.num_kv_heads * cfg.head_dim, ("embed", "kv_heads"), use_bias=True,
                      name="v_proj" + suffix, **kw)(x)
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
    return logical_dense(cfg.hidden_size, ("heads", "embed"), use_bias=False, dtype=self.dtype,
                         param_dtype=self.param_dtype, name="o_proj" + suffix)(o)

  @nn.compact
  def __call__(self, und_x, gen_x, ids: attention_lib.TokenIds, rope):
    """und_x [B, Lu, D], gen_x [B, Lg, D]; ids/rope cover the concatenated [und; gen] tokens."""
    und_len = und_x.shape[1]
    if self.expert_scope == "ffn":
      q, k, v = self._project(jnp.concatenate([und_x, gen_x], axis=1), "")
    else:
      (qu, ku, vu), (qg, kg, vg) = self._project(und_x, ""), self._project(gen_x, GEN)
      q, k, v = (jnp.concatenate(pair, axis=1) for pair in ((qu, qg), (ku, kg), (vu, vg)))
    cos, sin = rope
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    q = constrain(q, ("act_batch", "act_len", "act_heads", "act_head_dim"))
    k = constrain(k, ("act_batch", "act_len", "act_kv_heads", "act_head_dim"))
    out = attention_lib.attention(q, k, v, ids, ids, self.attention_impl)
    if self.expert_scope == "ffn":
      out = self._out(out, "")
      return out[:, :und_len], out[:, und_len:]
    return self._out(out[:, :und_len], ""), self._out(out[:, und_len:], GEN)


class MoTDecoderLayer(nn.Module):
  """One pre-norm decoder layer applied to both streams; scanned over layers."""

  config: ml_collections.ConfigDict
  expert_scope: str
  attention_impl: str
  dtype: Dtype
  param_dtype: Dtype

  def _norm(self, name):
    return RMSNorm(self.config.rms_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                   name=name)

  def _norm_both(self, name, und_h, gen_h):
    if self.expert_scope == "ffn":
      norm = self._norm(name)
      return norm(und_h), norm(gen_h)
    return self._norm(name)(und_h), self._norm(name + GEN)(gen_h)

  @nn.compact
  def __call__(self, streams, ids, rope):
    und_h, gen_h = streams
    und_x, gen_x = self._norm_both("input_layernorm", und_h, gen_h)
    und_a, gen_a = JointSelfAttention(self.config, self.expert_scope, self.attention_impl,
                                      self.dtype, self.param_dtype, name="self_attn")(
                                          und_x, gen_x, ids, rope)
    und_h, gen_h = und_h + und_a, gen_h + gen_a
    und_x, gen_x = self._norm_both("post_attention_layernorm", und_h, gen_h)
    und_h = und_h + ExpertMLP(self.config, self.dtype, self.param_dtype, name="mlp")(und_x)
    gen_h = gen_h + ExpertMLP(self.config, self.dtype, self.param_dtype, name="mlp" + GEN)(gen_x)
    return (constrain(und_h, _STREAM_AXES), constrain(gen_h, _STREAM_AXES)), None


class MoTDecoder(nn.Module):
  """Stack of `MoTDecoderLayer`s (nn.scan over layers) plus final norms.

  Inputs: und_h [B, Lu, D], gen_h [B, Lg, D] (Lg may be 0), und_ids/gen_ids `TokenIds` [B, L*],
  und_pos/gen_pos RoPE positions [B, L*]. Returns the final-normed (und_h, gen_h).
  """

  config: ml_collections.ConfigDict
  expert_scope: str = "ffn"
  attention_impl: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  scan_layers: bool = True
  remat_policy: str = "none"

  @nn.compact
  def __call__(self, und_h, gen_h, und_ids, gen_ids, und_pos, gen_pos):
    cfg = self.config
    ids = attention_lib.TokenIds.concat(und_ids, gen_ids)
    rope = rope_tables(jnp.concatenate([und_pos, gen_pos], axis=1), cfg.head_dim, cfg.rope_theta)
    layer_cls = MoTDecoderLayer
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"model.remat_policy: unknown policy {self.remat_policy!r}; "
                       f"known: {sorted(REMAT_POLICIES)}")
    if self.remat_policy != "none":
      layer_cls = nn.remat(layer_cls, policy=REMAT_POLICIES[self.remat_policy],
                           prevent_cse=not self.scan_layers)
    args = (cfg, self.expert_scope, self.attention_impl, self.dtype, self.param_dtype)
    streams = (constrain(und_h.astype(self.dtype), _STREAM_AXES),
               constrain(gen_h.astype(self.dtype), _STREAM_AXES))
    if self.scan_layers:
      stack = nn.scan(layer_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      streams, _ = stack(*args, name="layers")(streams, ids, rope)
    else:
      for index in range(cfg.num_layers):
        streams, _ = layer_cls(*args, name=f"layers_{index}")(streams, ids, rope)
    und_h, gen_h = streams
    if self.expert_scope == "ffn":
      norm = RMSNorm(cfg.rms_norm_eps, self.dtype, self.param_dtype, name="norm")
      return norm(und_h), norm(gen_h)
    return (RMSNorm(cfg.rms_norm_eps, self.dtype, self.param_dtype, name="norm")(und_h),
            RMSNorm(cfg.rms_norm_eps, self.dtype, self.param_dtype, name="norm" + GEN)(gen_h))
