"""Memory-efficient attention for a CPU: rows and query chunks one at a time, probabilities
recomputed in the backward pass (FlashAttention's backward, without its key tiling).

`xla_attention` (attention.py) lets autodiff save the [B, KV, G, Lq, Lk] softmax weights of
every layer and walks the whole [.., Lq, Lk] tensor five to six times per pass; at `small`'s
shapes each is 64 MiB, twice the L3 cache, so attention was bound by memory traffic. Here one
batch row and one chunk of queries at a time (a [KV, G * C, Lk] block: 4 MiB at C=256) go
through the logits, the softmax and the value product while they are in cache, and only the
output and the log-sum-exp per query are kept for the backward pass, which recomputes the
probabilities chunk by chunk and uses delta = rowsum(dO * O) instead of rowsum(P * dP).

Rows are a sequential loop (`lax.map`), so this is a single-device kernel: a batch axis
sharded over a mesh would be gathered. `attention.resolve_impl("auto")` picks it only for a
single CPU device; measured in docs/training.md "Profiling a step".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_NEG = float(jnp.finfo(jnp.float32).min)


QUERY_CHUNK = 256  # queries per block: 128, 256 and 512 measured, 256 the fastest at `small`
# A row's chunks as straight-line code rather than a loop: a loop stacks each chunk's outputs
# into a zero-filled buffer and slices its inputs out of one; unrolled, the `small` step ran
# 3-6% faster over three interleaved runs (docs/training.md). Rows stay a loop (unrolling them
# too measured slower). Compile time grows with Lq / QUERY_CHUNK.
CHUNKS_UNROLLED = True


def fold_query_groups(q, kv_heads: int, chunk: int):
  """[B, Lq, H, D] (Lq a multiple of `chunk`) -> [B, Lq / chunk, KV, G * chunk, D]: each kv
  head's G query groups of one chunk folded into one matmul operand, so the logits need no
  relayout copy (docs/training.md "Profiling a step")."""
  batch, q_len, heads, head_dim = q.shape
  groups = heads // kv_heads
  q = q.reshape(batch, q_len // chunk, chunk, kv_heads, groups, head_dim)
  return q.transpose(0, 1, 3, 4, 2, 5).reshape(
    batch, q_len // chunk, kv_heads, groups * chunk, head_dim
  )


def unfold_query_groups(out, heads: int):
  """The inverse of `fold_query_groups`: [B, chunks, KV, G * C, D] -> [B, chunks * C, H, D]."""
  batch, chunks, kv_heads, rows, head_dim = out.shape
  groups = heads // kv_heads
  chunk = rows // groups
  out = out.reshape(batch, chunks, kv_heads, groups, chunk, head_dim)
  return out.transpose(0, 1, 4, 2, 3, 5).reshape(batch, chunks * chunk, heads, head_dim)


def zero_empty_rows(out, mask):
  """out [B, Lq, H, D] with the rows of queries that may attend to no key (mask [B, Lq, Lk])
  set to zero: a [B, Lq] factor, not a second select over the logits."""
  return out * mask.any(axis=-1)[:, :, None, None].astype(out.dtype)


def chunked_attention(q, k, v, mask, query_chunk: int = QUERY_CHUNK):
  """Same contract as `attention.xla_attention`: q [B, Lq, H, D]; k, v [B, Lk, KV, D];
  mask [B, Lq, Lk] boolean, or None for every key (the VAE's attention). Returns [B, Lq, H, D]
  in q's dtype; a query with no allowed key gets zeros. Lq is padded up to a multiple of the
  chunk (the padding rows are cut off again)."""
  batch, q_len, heads, head_dim = q.shape
  k_len, kv_heads = k.shape[1], k.shape[2]
  if heads % kv_heads:
    raise ValueError(f"attention: {heads} query heads are not a multiple of {kv_heads} kv heads")
  chunk = max(1, min(query_chunk, q_len))
  chunks = -(-q_len // chunk)
  pad = chunks * chunk - q_len
  if pad:
    q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
  mask_blocks = None
  if mask is not None:
    mask_blocks = jnp.pad(mask, ((0, 0), (0, pad), (0, 0))).reshape(batch, chunks, chunk, k_len)
  scaled = q * jnp.asarray(1.0 / np.sqrt(head_dim), q.dtype)
  q_blocks = fold_query_groups(scaled, kv_heads, chunk)
  out = _attend(q_blocks, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask_blocks)
  out = unfold_query_groups(out, heads)[:, :q_len].astype(q.dtype)
  return out if mask is None else zero_empty_rows(out, mask)


def _logits(q_block, k, mask_block):
  """Masked logits [KV, G * C, Lk] in float32 of one row's chunk."""
  logits = jnp.einsum("kmd,ksd->kms", q_block, k, preferred_element_type=jnp.float32)
  if mask_block is None:
    return logits
  kv_heads, rows, _ = q_block.shape
  chunk, k_len = mask_block.shape
  logits = logits.reshape(kv_heads, rows // chunk, chunk, k_len)
  return jnp.where(mask_block, logits, _NEG).reshape(kv_heads, rows, k_len)


def _forward_block(q_block, k, v, mask_block):
  """(out [KV, G * C, D] float32, log-sum-exp [KV, G * C, 1]) of one row's chunk."""
  logits = _logits(q_block, k, mask_block)
  peak = jnp.max(logits, axis=-1, keepdims=True)
  unnormalised = jnp.exp(logits - peak)
  total = jnp.sum(unnormalised, axis=-1, keepdims=True)
  out = jnp.einsum(
    "kms,ksd->kmd", unnormalised.astype(v.dtype), v, preferred_element_type=jnp.float32
  )
  return out / total, peak + jnp.log(total)


def _forward_row(q_blocks, k, v, mask_blocks):
  """One row's (out, lse) [chunks, KV, G * C, ...]: its chunks one after another, unrolled
  (`CHUNKS_UNROLLED`)."""
  step = lambda _, xs: (None, _forward_block(xs[0], k, v, xs[1]))
  return jax.lax.scan(step, None, (q_blocks, mask_blocks), unroll=CHUNKS_UNROLLED)[1]


@jax.custom_vjp
def _attend(q_blocks, k, v, mask_blocks):
  """q_blocks [B, chunks, KV, G * C, D]; k, v [B, KV, Lk, D]; mask_blocks [B, chunks, C, Lk].
  Returns out [B, chunks, KV, G * C, D] float32."""
  return _attend_fwd(q_blocks, k, v, mask_blocks)[0]


def _attend_fwd(q_blocks, k, v, mask_blocks):
  out, lse = jax.lax.map(lambda xs: _forward_row(*xs), (q_blocks, k, v, mask_blocks))
  return out, (q_blocks, k, v, mask_blocks, out, lse)


def _backward_row(q_blocks, k, v, mask_blocks, out, lse, d_out):
  """One row's (dq_blocks, dk, dv): a scan over its chunks, dk and dv summed in float32."""

  def chunk_step(carry, xs):
    dk, dv = carry
    q_block, mask_block, out_block, lse_block, d_out_block = xs
    probs = jnp.exp(_logits(q_block, k, mask_block) - lse_block)  # masked: exp(min - lse) = 0
    d_out_v = d_out_block.astype(v.dtype)
    dv = dv + jnp.einsum(
      "kms,kmd->ksd", probs.astype(v.dtype), d_out_v, preferred_element_type=jnp.float32
    )
    d_probs = jnp.einsum("kmd,ksd->kms", d_out_v, v, preferred_element_type=jnp.float32)
    delta = jnp.sum(d_out_block * out_block, axis=-1, keepdims=True)
    d_logits = probs * (d_probs - delta)
    dq_block = jnp.einsum(
      "kms,ksd->kmd", d_logits.astype(k.dtype), k, preferred_element_type=jnp.float32
    )
    dk = dk + jnp.einsum(
      "kms,kmd->ksd", d_logits.astype(q_block.dtype), q_block, preferred_element_type=jnp.float32
    )
    return (dk, dv), dq_block

  zeros = jnp.zeros(k.shape, jnp.float32)
  (dk, dv), dq_blocks = jax.lax.scan(
    chunk_step, (zeros, zeros), (q_blocks, mask_blocks, out, lse, d_out), unroll=CHUNKS_UNROLLED
  )
  return dq_blocks, dk, dv


def _attend_bwd(residuals, d_out):
  q_blocks, k, v, mask_blocks, out, lse = residuals
  dq, dk, dv = jax.lax.map(
    lambda xs: _backward_row(*xs), (q_blocks, k, v, mask_blocks, out, lse, d_out)
  )
  return dq.astype(q_blocks.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_attend.defvjp(_attend_fwd, _attend_bwd)
