"""Training objectives as pure functions: rectified flow (BAGEL's convention), pixel L1 and
1-SSIM on decoded images, and next-token cross-entropy on the quality description.

Rectified-flow convention (so converted BAGEL/UniMedVL checkpoints work): t=0 is clean, t=1 is
noise, x_t = (1-t) x0 + t eps, the model predicts v = eps - x0, and t is logit-normal with the
shift s*t / (1 + (s-1) t). This is the paper's Eq. 4 with t_paper = 1 - t.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from medq_jax.metrics import ssim


def sample_timesteps(rng: jax.Array, shape, shift: float = 1.0) -> jax.Array:
  """Logit-normal t in (0, 1) with BAGEL's timestep shift."""
  t = jax.nn.sigmoid(jax.random.normal(rng, shape, jnp.float32))
  return shift * t / (1.0 + (shift - 1.0) * t)


def noise_latents(x0: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
  """x_t = (1 - t) x0 + t eps; t broadcasts against x0 [..., features]."""
  t = t[..., None]
  return (1.0 - t) * x0 + t * eps


def degraded_source(degraded: jax.Array, eps: jax.Array, sigma: float) -> jax.Array:
  """The flow's t=1 end when it starts at the degraded image (model.flow_source="degraded",
  InDI-style): its latents plus sigma * Gaussian noise; replaces eps in x_t and in v = eps - x0."""
  return degraded + sigma * eps


def predicted_clean(x_t: jax.Array, t: jax.Array, velocity: jax.Array) -> jax.Array:
  """x0_hat = x_t - t v_hat (exact when v_hat = eps - x0)."""
  return x_t - t[..., None] * velocity


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `values` over positions where mask > 0 (0 when the mask is empty)."""
  mask = mask.astype(jnp.float32)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def rectified_flow_loss(
  velocity: jax.Array, x0: jax.Array, eps: jax.Array, mask: jax.Array
) -> jax.Array:
  """MSE between predicted and target velocity (eps - x0), averaged over masked tokens.

  velocity, x0, eps: [B, Lg, F]; mask: [B, Lg] (1 on noised target tokens).
  """
  per_token = jnp.mean((velocity - (eps - x0)) ** 2, axis=-1)
  return masked_mean(per_token, mask)


def next_token_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array):
  """Mean CE of logits [B, L, V] against next-token targets [B, L] where mask [B, L] > 0.

  Returns (loss, accuracy) over the masked positions.
  """
  logits32 = logits.astype(jnp.float32)
  safe_targets = jnp.maximum(targets, 0)
  # -log p(target) = logsumexp - target logit: unlike picking from log_softmax, the backward
  # writes no [B, L, V] log-probability gradient (the LM head's fwd+bwd at `small`: 72 -> 40 ms)
  target_logit = jnp.take_along_axis(logits32, safe_targets[..., None], axis=-1)[..., 0]
  token_nll = jax.nn.logsumexp(logits32, axis=-1) - target_logit
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return masked_mean(token_nll, mask), masked_mean(correct, mask)


def pixel_losses(
  restored: jax.Array,
  target: jax.Array,
  row_weight: jax.Array,
  pixel_mask: jax.Array | None = None,
):
  """(L1, 1 - SSIM) between restored and target grey images [B, H, W] in [0, 1].

  row_weight [B] selects rows that count (e.g. t <= max_t); both losses are weighted means.
  pixel_mask [B, H, W] (optional): each image's own pixels, for images smaller than the canvas
  they are padded into; L1 is their mean and SSIM the image's own (`metrics.ssim(mask=...)`).
  """
  if pixel_mask is None:
    l1 = jnp.mean(jnp.abs(restored - target), axis=(-2, -1))
  else:
    pixel_mask = pixel_mask.astype(jnp.float32)
    l1 = jnp.sum(jnp.abs(restored - target) * pixel_mask, axis=(-2, -1)) / jnp.maximum(
      jnp.sum(pixel_mask, axis=(-2, -1)), 1.0
    )
  one_minus_ssim = 1.0 - ssim(restored, target, data_range=1.0, per_image=True, mask=pixel_mask)
  return masked_mean(l1, row_weight), masked_mean(one_minus_ssim, row_weight)


def restoration_loss(
  rf: jax.Array, l1: jax.Array, one_minus_ssim: jax.Array, alpha: float, beta: float
) -> jax.Array:
  """L_IR = L_rf + alpha * L1 + beta * (1 - SSIM) (paper Eq. 6; alpha=0.2, beta=0.1)."""
  return rf + alpha * l1 + beta * one_minus_ssim


def total_loss(l_ir: jax.Array, l_iqa: jax.Array, lam: float) -> jax.Array:
  """L = L_IR + lambda * L_IQA (paper Eq. 8; lambda=0.25; lambda=0 in stage 1)."""
  return l_ir + lam * l_iqa
