"""KV-cached text decoding: after a prefill, one jitted loop feeds each row's newest token,
attends to the cache, writes the token's keys/values at the row's own slot, and picks the next
token -- greedy, temperature or top-p -- until every row has emitted and fed its stop token or
`max_new_tokens` content tokens (then the stop token is forced, so the text split is always
closed, as the training layout closes it).

Static shapes throughout (cache capacity, [B, max_new_tokens + 1] outputs), so one compilation
serves every batch of a given size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from medq_jax.infer import kv_cache_ops
from medq_jax.infer.token_sampling import choose_tokens
from medq_jax.models.attention import TokenIds
from medq_jax.models.kv_cache import DecoderCache
from medq_jax.types import KIND_TEXT, PAD_SAMPLE, SPLIT_CAUSAL


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """How to pick tokens. temperature 0 is greedy; top_p < 1 samples from the nucleus."""

  max_new_tokens: int = 256
  temperature: float = 0.0
  top_p: float = 1.0

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens: expected >= 1, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ValueError(f"temperature: expected >= 0, got {self.temperature}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p: expected in (0, 1], got {self.top_p}")


class DecodeStart(NamedTuple):
  """Where generation continues, per row [B]: the text split it extends, the RoPE position of
  the first new token, and the first free cache slot."""

  split: jax.Array
  position: jax.Array
  slot: jax.Array


class DecodeResult(NamedTuple):
  tokens: jax.Array  # [B, max_new + 1]: content tokens, then the stop token, then -1
  lengths: jax.Array  # [B] content tokens (stop token excluded)
  truncated: jax.Array  # [B] bool: max_new_tokens reached, stop token forced
  cache: DecoderCache  # extended by every fed token (the stop token included)
  next_position: jax.Array  # [B] RoPE position after the closed text split
  next_slot: jax.Array  # [B] first free slot after it


def token_chunk(tokens, active, split, position, latent_dim: int) -> dict[str, jax.Array]:
  """A one-token-per-row und chunk (inactive rows are padding, invisible to everything)."""
  rows = tokens.shape[0]
  column = lambda x: x.astype(jnp.int32)[:, None]
  empty = jnp.zeros((rows, 0), jnp.int32)
  chunk = dict(
    und_token_ids=column(jnp.maximum(tokens, 0)),
    und_kind=jnp.full((rows, 1), KIND_TEXT, jnp.int32),
    und_positions=column(position),
    und_sample_ids=column(jnp.where(active, 0, PAD_SAMPLE)),
    und_split_ids=column(split),
    und_split_modes=jnp.full((rows, 1), SPLIT_CAUSAL, jnp.int32),
    und_vit_index=jnp.zeros((rows, 1), jnp.int32),
    gen_latents=jnp.zeros((rows, 0, latent_dim), jnp.float32),
    gen_timesteps=jnp.zeros((rows, 0), jnp.float32),
  )
  for key in ("positions", "sample_ids", "split_ids", "split_modes", "latent_pos"):
    chunk[f"gen_{key}"] = empty
  return chunk


def decode(
  apply_fn: Callable[..., dict[str, Any]],
  params: Any,
  cache: DecoderCache,
  first_logits: jax.Array,
  start: DecodeStart,
  stop_id: int,
  settings: DecodeSettings,
  rng: jax.Array,
  latent_dim: int,
) -> DecodeResult:
  """Generates up to `settings.max_new_tokens` tokens per row after a prefill.

  apply_fn(params, chunk, cache) -> model outputs with 'logits' [B, 1, V] and 'kv';
  first_logits [B, V]: the prefill's logits at each row's last context token. The cache needs
  max_new_tokens + 2 free slots after `start.slot` (finished rows keep writing one invisible
  padding token at their next slot). Jit the caller (settings, stop_id and latent_dim are static).
  """
  limit = settings.max_new_tokens
  rows = first_logits.shape[0]

  def pick(logits, key, n_content):
    token = choose_tokens(logits, key, settings.temperature, settings.top_p)
    return jnp.where(n_content >= limit, stop_id, token)

  rng, first_key = jax.random.split(rng)
  zeros = jnp.zeros((rows,), jnp.int32)
  state = dict(
    step=jnp.int32(0),
    cache=cache,
    token=pick(first_logits, first_key, zeros),
    position=start.position.astype(jnp.int32),
    slot=start.slot.astype(jnp.int32),
    active=jnp.ones((rows,), jnp.bool_),
    n_content=zeros,
    tokens=jnp.full((rows, limit + 1), -1, jnp.int32),
    rng=rng,
  )

  def cond(state):
    return (state["step"] < limit + 1) & jnp.any(state["active"])

  def body(state):
    token, active = state["token"], state["active"]
    is_stop = token == stop_id
    chunk = token_chunk(token, active, start.split, state["position"], latent_dim)
    out = apply_fn(params, chunk, state["cache"])
    ids = TokenIds(
      chunk["und_sample_ids"],
      chunk["und_split_ids"],
      chunk["und_split_modes"],
      chunk["und_positions"],
    )
    new_cache = kv_cache_ops.write_tokens(state["cache"], out["kv"], ids, state["slot"])
    n_content = state["n_content"] + (active & ~is_stop)
    rng, key = jax.random.split(state["rng"])
    tokens = state["tokens"].at[:, state["step"]].set(jnp.where(active, token, -1))
    return dict(
      step=state["step"] + 1,
      cache=new_cache,
      token=pick(out["logits"][:, 0], key, n_content),
      position=state["position"] + active,
      slot=state["slot"] + active,
      active=active & ~is_stop,
      n_content=n_content,
      tokens=tokens,
      rng=rng,
    )

  state = jax.lax.while_loop(cond, body, state)
  return DecodeResult(
    tokens=state["tokens"],
    lengths=state["n_content"],
    truncated=state["n_content"] >= limit,
    cache=state["cache"],
    next_position=state["position"],
    next_slot=state["slot"],
  )
