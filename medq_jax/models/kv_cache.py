"""The decoder's key/value cache as plain arrays: what attention of later tokens reads.

A `DecoderCache` holds, for a static capacity C of slots per row, every layer's rotated keys and
values and the slots' mask ids (`TokenIds`) and visibility. Empty slots are invisible (and carry
the padding sample id), so a fixed-capacity cache is exact for any fill level. The model only
reads caches (`MedQUni.__call__(batch, cache=...)`); building and extending them is
`medq_jax.infer.kv_cache_ops`'s job.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from medq_jax.models.attention import TokenIds


class LayerCache(NamedTuple):
  """One layer's view: k, v [B, C, KV, Dh]; ids [B, C]; visible [B, C] bool."""

  k: jax.Array
  v: jax.Array
  ids: TokenIds
  visible: jax.Array


class DecoderCache(NamedTuple):
  """All layers: k, v [layers, B, C, KV, Dh]; ids `TokenIds` [B, C]; visible [B, C] bool."""

  k: jax.Array
  v: jax.Array
  ids: TokenIds
  visible: jax.Array
