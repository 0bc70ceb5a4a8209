"""Joint attention over the und and gen streams: BAGEL's mask semantics computed from per-token
ids, and one dispatch point for attention implementations (xla reference, cudnn, splash).

Every token carries `TokenIds`: the packed sample it belongs to, the logical split (a text span
or one image) and that split's mode. Token i may attend to token j iff

  same sample  and  (split_j < split_i  or  (split_j == split_i and (mode is full/noise or
  order_j <= order_i)))  and  not (mode_j == noise and split_j != split_i),

i.e. causal text, bidirectional images, and no token outside a noise split sees into it.
`order` is the RoPE position, which increases by one per text token inside a causal split.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from medq_jax.models.chunked_attention import (
  chunked_attention,
  fold_query_groups,
  unfold_query_groups,
  zero_empty_rows,
)
from medq_jax.types import PAD_SAMPLE, SPLIT_CAUSAL, SPLIT_NOISE

IMPLS = ("auto", "xla", "chunked", "cudnn", "splash")
CHUNKED_MIN_QUERIES = 64  # below this (decoding steps) the per-row loop costs more than it saves


class TokenIds(NamedTuple):
  """Per-token mask ids, each [B, L] int32."""

  sample: jax.Array
  split: jax.Array
  mode: jax.Array
  order: jax.Array

  @staticmethod
  def concat(a: TokenIds, b: TokenIds) -> TokenIds:
    return TokenIds(*(jnp.concatenate([x, y], axis=1) for x, y in zip(a, b)))


def allowed_mask(q: TokenIds, kv: TokenIds) -> jax.Array:
  """Boolean [B, Lq, Lk]: may query i attend to key j. Padding attends only to itself."""
  same_sample = q.sample[:, :, None] == kv.sample[:, None, :]
  split_q, split_k = q.split[:, :, None], kv.split[:, None, :]
  earlier_split = split_k < split_q
  same_split = split_k == split_q
  bidirectional = q.mode[:, :, None] != SPLIT_CAUSAL
  causal_ok = kv.order[:, None, :] <= q.order[:, :, None]
  within = same_split & (bidirectional | causal_ok)
  into_noise = (kv.mode[:, None, :] == SPLIT_NOISE) & ~same_split
  allowed = same_sample & (earlier_split | within) & ~into_noise
  is_pad = (q.sample[:, :, None] == PAD_SAMPLE) | (kv.sample[:, None, :] == PAD_SAMPLE)
  return jnp.where(
    is_pad, same_sample & same_split & (kv.order[:, None, :] == q.order[:, :, None]), allowed
  )


def xla_attention(q, k, v, mask):
  """Reference attention with grouped-query heads and an arbitrary boolean mask.

  q: [B, Lq, H, D]; k, v: [B, Lk, KV, D] with H % KV == 0; mask: [B, Lq, Lk].
  Returns [B, Lq, H, D]. Softmax in float32; a query with no allowed key gets zeros.

  Each kv head's query groups are folded into one [G * Lq, D] operand, so both products are one
  batched matmul per (row, kv head) and the [B, KV, G, Lq, Lk] logits need no relayout copy:
  1.5x faster forward + backward than a [B, Lq, KV, G, D] einsum on CPU at `small`'s shapes
  (docs/training.md "Profiling a step"). The 1/sqrt(D) scale goes on q, and empty rows are
  zeroed by a [B, Lq] factor on the output instead of a second select over the logits: two
  passes fewer over the largest tensor of the step.
  """
  batch, q_len, heads, head_dim = q.shape
  k_len, kv_heads = k.shape[1], k.shape[2]
  groups = heads // kv_heads
  q = q * jnp.asarray(1.0 / np.sqrt(head_dim), q.dtype)  # on q, not on the [.., Lq, Lk] logits
  q = fold_query_groups(q, kv_heads, q_len)[:, 0]  # one chunk: [B, KV, G * Lq, D]
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  logits = jnp.einsum("bkmd,bksd->bkms", q, k, preferred_element_type=jnp.float32)
  logits = logits.reshape(batch, kv_heads, groups, q_len, k_len)
  logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkms,bksd->bkmd", weights.reshape(batch, kv_heads, groups * q_len, k_len), v)
  return zero_empty_rows(unfold_query_groups(out[:, None], heads), mask)


def cudnn_attention(q, k, v, mask):
  """cuDNN flash attention through `jax.nn.dot_product_attention` (GPU only)."""
  heads, kv_heads = q.shape[2], k.shape[2]
  if heads != kv_heads:
    k = jnp.repeat(k, heads // kv_heads, axis=2)
    v = jnp.repeat(v, heads // kv_heads, axis=2)
  return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation="cudnn")


def resolve_impl(impl: str, q_len: int) -> str:
  """`model.attention_impl` as run: "auto" is "chunked" on a single CPU device for chunks of at
  least CHUNKED_MIN_QUERIES queries (training steps, prefills), "xla" otherwise."""
  if impl != "auto":
    return impl
  single_cpu = jax.default_backend() == "cpu" and jax.device_count() == 1
  return "chunked" if single_cpu and q_len >= CHUNKED_MIN_QUERIES else "xla"


def attention(
  q,
  k,
  v,
  q_ids: TokenIds,
  kv_ids: TokenIds,
  impl: str = "auto",
  kv_visible: jax.Array | None = None,
):
  """The one attention entry point: builds the mask from ids and dispatches on `impl`.

  kv_visible [B, Lk] (optional) hides keys from every query: a KV cache's empty slots, or the
  cached splits a guidance context leaves out.
  """
  mask = allowed_mask(q_ids, kv_ids)
  if kv_visible is not None:
    mask = mask & kv_visible[:, None, :]
  impl = resolve_impl(impl, q.shape[1])
  if impl == "xla":
    return xla_attention(q, k, v, mask)
  if impl == "chunked":
    return chunked_attention(q, k, v, mask)
  if impl == "cudnn":
    if jax.default_backend() != "gpu":
      raise ValueError("model.attention_impl='cudnn' needs a GPU backend; use 'xla' here")
    return cudnn_attention(q, k, v, mask)
  if impl == "splash":
    raise NotImplementedError(
      "model.attention_impl='splash' (TPU Pallas kernel) is not wired yet; use 'xla'"
    )
  raise ValueError(
    f"model.attention_impl: unknown implementation {impl!r} (expected one of {', '.join(IMPLS)})"
  )
