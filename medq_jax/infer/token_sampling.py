"""Next-token choice from logits: greedy, temperature, and nucleus (top-p) sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def top_p_filter(logits: jax.Array, top_p: float) -> jax.Array:
  """Logits [B, V] with every token outside the smallest set whose probability reaches `top_p`
  set to -inf (the most likely token always stays)."""
  order = jnp.argsort(-logits, axis=-1)
  sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  sorted_keep = mass_before < top_p
  keep = (
    jnp.zeros_like(sorted_keep).at[jnp.arange(logits.shape[0])[:, None], order].set(sorted_keep)
  )
  return jnp.where(keep, logits, -jnp.inf)


def choose_tokens(
  logits: jax.Array, rng: jax.Array, temperature: float = 0.0, top_p: float = 1.0
) -> jax.Array:
  """Token ids [B] from logits [B, V]: argmax when temperature == 0, else a sample from
  softmax(logits / temperature), restricted to the top-p nucleus when top_p < 1."""
  if temperature <= 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  scaled = logits.astype(jnp.float32) / temperature
  if top_p < 1.0:
    scaled = top_p_filter(scaled, top_p)
  return jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)
