"""Building and extending a `DecoderCache` (fixed capacity, per-row write positions).

A prefill runs the model on a context chunk with `return_kv=True`; `cache_from_chunk` pads its
keys/values into a cache of static capacity. Decoding writes one token per row at that row's own
slot (`write_tokens`), so rows of different lengths share one jitted step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from medq_jax.models.attention import TokenIds
from medq_jax.models.kv_cache import DecoderCache
from medq_jax.types import PAD_SAMPLE


def chunk_ids(chunk) -> TokenIds:
  """Mask ids of a model chunk in the model's physical order (und tokens, then gen tokens)."""
  return TokenIds(
    *(
      jnp.concatenate([chunk[f"und_{key}"], chunk[f"gen_{key}"]], axis=1)
      for key in ("sample_ids", "split_ids", "split_modes", "positions")
    )
  )


def cache_from_chunk(kv, ids: TokenIds, capacity: int) -> DecoderCache:
  """A cache of `capacity` slots holding a prefilled chunk's (k, v) [layers, B, L, KV, Dh] and
  ids [B, L]; the L tokens fill the first slots, the rest are empty (invisible padding)."""
  k, v = kv
  length = k.shape[2]
  if capacity < length:
    raise ValueError(f"KV cache capacity {capacity} < prefilled length {length}")
  pad = capacity - length
  widths = ((0, 0), (0, 0), (0, pad), (0, 0), (0, 0))
  pad_ids = lambda x, value: jnp.pad(x, ((0, 0), (0, pad)), constant_values=value)
  ids = TokenIds(
    sample=pad_ids(ids.sample, PAD_SAMPLE),
    split=pad_ids(ids.split, 0),
    mode=pad_ids(ids.mode, 0),
    order=pad_ids(ids.order, 0),
  )
  return DecoderCache(jnp.pad(k, widths), jnp.pad(v, widths), ids, ids.sample != PAD_SAMPLE)


def write_tokens(cache: DecoderCache, kv, ids: TokenIds, slot: jax.Array) -> DecoderCache:
  """Writes a chunk's (k, v) [layers, B, n, KV, Dh] and ids [B, n] at per-row slots [B]."""
  k_new, v_new = kv

  def put_row(dest, src, start):  # dest [C, ...], src [n, ...]
    index = (start,) + (0,) * (dest.ndim - 1)
    return jax.lax.dynamic_update_slice(dest, src.astype(dest.dtype), index)

  put_rows = jax.vmap(put_row)
  put_layers = jax.vmap(put_rows, in_axes=(0, 0, None))
  new_ids = TokenIds(*(put_rows(a, b, slot) for a, b in zip(cache.ids, ids)))
  visible = put_rows(cache.visible, ids.sample != PAD_SAMPLE, slot)
  return DecoderCache(
    put_layers(cache.k, k_new, slot), put_layers(cache.v, v_new, slot), new_ids, visible
  )


def concat_rows(caches: list[DecoderCache]) -> DecoderCache:
  """Caches of equal capacity stacked along the batch (one forward for several contexts)."""
  return DecoderCache(
    jnp.concatenate([c.k for c in caches], axis=1),
    jnp.concatenate([c.v for c in caches], axis=1),
    TokenIds(*(jnp.concatenate(parts, axis=0) for parts in zip(*(c.ids for c in caches)))),
    jnp.concatenate([c.visible for c in caches], axis=0),
  )
