"""The MedQ-UNI loss and train step as pure functions of (state, frozen VAE params, batch, rng).

Per row: the frozen VAE encodes the condition and target images to latent tokens, sampling the
posterior as BAGEL does in training (`train.sample_vae_posterior`); the target's tokens are
noised at a logit-normal t (the condition stays clean, t=0); the model predicts the velocity of
the target and the description's next tokens. Loss (paper Eq. 6 and 8):
  L = L_rf + alpha * L1 + beta * (1 - SSIM) + lambda * CE,
with pixel terms on x0_hat = x_t - t v_hat decoded through the frozen VAE and compared, unclipped,
with the target in [0, 1]. The gradient is taken with respect to the stage's trainable
parameters only (`state.split_params`): in stage 1 no weight gradient of an und parameter exists.

Every step checks its loss, gradient norm and updated parameters for NaN/Inf inside the jitted
step: a non-finite step skips its update (state unchanged but for the step counter) and reports
`nonfinite=1`; the loop counts them and stops after `train.max_consecutive_nonfinite`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from medq_jax import objectives
from medq_jax.layout import IMAGES_PER_EXAMPLE
from medq_jax.models.vae import patchify_latents, unpatchify_latents
from medq_jax.train import accumulate
from medq_jax.train.state import TrainState, merge_params, split_params
from medq_jax.types import PAD_SAMPLE


def to_grey01(images: jax.Array) -> jax.Array:
  """[..., H, W, 3] in [-1, 1] -> [..., H, W] grey, (x + 1) / 2, NOT clipped: a prediction
  outside the image range keeps its gradient."""
  return (jnp.mean(images, axis=-1) + 1.0) / 2.0


def pixel_loss_terms(
  decoded: jax.Array,
  target_images: jax.Array,
  row_weight: jax.Array,
  pixel_mask: jax.Array | None = None,
):
  """(L1, 1 - SSIM) between the decoded prediction [B, H, W, 3] (unclipped) and the target
  images [B, H, W, 3] in [-1, 1] (clipped to [0, 1] grey, a no-op for packed images), over
  each image's own pixels (`pixel_mask` [B, H, W]; all when None)."""
  restored = to_grey01(decoded)
  target = jnp.clip(to_grey01(target_images), 0.0, 1.0)
  return objectives.pixel_losses(restored, target, row_weight, pixel_mask)


def token_pixel_mask(token_valid: jax.Array, height: int, width: int) -> jax.Array:
  """[N, H, W] pixel mask of images whose latent tokens [N, T] (row-major over a T-token grid
  of the canvas' aspect) are valid where > 0: each token stands for its block of pixels. A
  smaller image of a mixed-size batch fills the top-left of the canvas, its tokens likewise."""
  count, tokens = token_valid.shape
  rows = int(round((tokens * height / width) ** 0.5))
  cols = tokens // rows
  if rows * cols != tokens or height % rows or width % cols:
    raise ValueError(f"{tokens} tokens do not tile a {height}x{width} image")
  grid = token_valid.reshape(count, rows, cols) > 0
  return jnp.repeat(jnp.repeat(grid, height // rows, axis=1), width // cols, axis=2)


def aligned_condition(x0: jax.Array, cond_index: jax.Array, sample_ids=None) -> jax.Array:
  """[B, Lg, D]: the latent token `cond_index` [B, Lg] points at (`layout.condition_index`: the
  degraded image's token at the same position), zeros where it is -1 or, given the gen
  `sample_ids`, where that slot is padding (a dropped condition)."""
  safe = jnp.maximum(cond_index, 0)
  aligned = jnp.take_along_axis(x0, safe[..., None], axis=1)
  present = cond_index >= 0
  if sample_ids is not None:
    present &= jnp.take_along_axis(sample_ids, safe, axis=1) != PAD_SAMPLE
  return jnp.where(present[..., None], aligned, 0.0)


def target_tokens(x: jax.Array, num_images: int) -> jax.Array:
  """The target image's tokens of every example slot: gen-stream values x [B, Lg, ...] of rows
  holding `num_images` images of `Lg / num_images` tokens each -> [B * K, tokens, ...]."""
  rows, length = x.shape[:2]
  if length % num_images:
    raise ValueError(f"gen stream of {length} tokens does not split into {num_images} images")
  per_image = x.reshape((rows, num_images, length // num_images) + x.shape[2:])
  targets = per_image[:, IMAGES_PER_EXAMPLE - 1 :: IMAGES_PER_EXAMPLE]
  return targets.reshape((-1,) + targets.shape[2:])


def ce_positions(model_config, und_len: int, slots: int) -> int:
  """Positions per row the training step runs the LM head on: `model.max_ce_tokens` per
  example slot (the layout rejects an example with more), or all `und_len` (0: no limit)."""
  cap = int(model_config.get("max_ce_tokens", 0)) * slots
  return cap if 0 < cap < und_len else und_len


def loss_positions(loss_mask: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
  """(positions [B, count] int32, valid [B, count] bool): each row's positions with
  loss_mask > 0 in order, then filler (position 0, not valid). The layout caps every row's
  count at `count`, so no loss position is left out."""
  positions = jax.vmap(lambda m: jnp.nonzero(m > 0, size=count, fill_value=0)[0])(loss_mask)
  valid = jnp.arange(count)[None, :] < jnp.sum(loss_mask > 0, axis=1, keepdims=True)
  return positions.astype(jnp.int32), valid


def make_loss_fn(model, vae, model_config, train_config) -> Callable:
  """Returns loss_fn(params, vae_params, batch, rng) -> (loss, metrics)."""
  p = model_config.latent_patch_size
  sample_posterior = bool(train_config.get("sample_vae_posterior", True))
  with_ce = train_config.stage == 2  # stage 1's plan has no description: no CE term
  spatial_condition = model_config.get("condition_injection", "bagel") == "spatial"
  from_degraded = model_config.get("flow_source", "gaussian") == "degraded"
  source_sigma = float(model_config.get("flow_source_sigma", 0.0))

  def encode_tokens(vae_params, images, rng):
    batch, num_images = images.shape[:2]
    flat = images.reshape((batch * num_images,) + images.shape[2:])
    latents = vae.apply(
      {"params": vae_params}, flat, rng if sample_posterior else None, method=vae.encode
    )
    tokens = patchify_latents(latents, p)
    return jax.lax.stop_gradient(
      tokens.reshape(batch, num_images * tokens.shape[1], -1)
    ), latents.shape[1:3]

  def decode_tokens(vae_params, tokens, latent_hw):
    latents = unpatchify_latents(tokens, latent_hw[0], latent_hw[1], p)
    return vae.apply({"params": vae_params}, latents, method=vae.decode)

  def loss_fn(params, vae_params, batch, rng):
    rng_t, rng_eps, rng_vae = jax.random.split(rng, 3)
    images = batch["vae_images"]  # [B, 2K, H, W, 3]: K example slots (K = 1 unless packed)
    x0, latent_hw = encode_tokens(vae_params, images, rng_vae)
    rows, slots = x0.shape[0], images.shape[1] // IMAGES_PER_EXAMPLE
    # One t per example slot, drawn in slot-major order: a packed batch of B rows x K slots draws
    # the t, eps and VAE noise of the unpacked batch of its B*K examples in the same order.
    t_slot = objectives.sample_timesteps(rng_t, (rows, slots), train_config.timestep_shift)
    eps = jax.random.normal(rng_eps, x0.shape, jnp.float32)
    if from_degraded:  # the flow starts at the degraded image (whether or not it is dropped)
      eps = objectives.degraded_source(
        aligned_condition(x0, batch["gen_cond_index"]), eps, source_sigma
      )
    noised = batch["gen_noised"]
    slot_of_token = batch["gen_image_index"] // IMAGES_PER_EXAMPLE
    t_tok = jnp.where(noised, jnp.take_along_axis(t_slot, slot_of_token, axis=1), 0.0)
    x_t = jnp.where(noised[..., None], objectives.noise_latents(x0, eps, t_tok), x0)
    inputs = {**batch, "gen_latents": x_t, "gen_timesteps": t_tok}
    if spatial_condition:
      inputs["gen_cond_latents"] = aligned_condition(
        x0, batch["gen_cond_index"], batch["gen_sample_ids"]
      )
    ce_targets, ce_mask = batch["und_targets"], batch["und_loss_mask"]
    positions_per_row = ce_positions(model_config, ce_mask.shape[1], slots)
    if with_ce and positions_per_row < ce_mask.shape[1]:
      positions, valid = loss_positions(ce_mask, positions_per_row)
      inputs["und_logit_positions"] = positions
      ce_targets = jnp.take_along_axis(ce_targets, positions, axis=1)
      ce_mask = jnp.where(valid, jnp.take_along_axis(ce_mask, positions, axis=1), 0.0)
    outputs = model.apply({"params": params}, inputs)
    velocity = outputs["velocity"]
    # per token over the batch, as BAGEL's mse (so independent of how examples share rows)
    rf = objectives.rectified_flow_loss(velocity, x0, eps, batch["gen_loss_mask"])

    metrics = {"loss_rf": rf}
    l_ir = rf
    if train_config.alpha_l1 or train_config.beta_ssim:
      # per target image: each example's target is the last of its images
      targets = lambda x: target_tokens(x, images.shape[1])
      x0_hat = objectives.predicted_clean(targets(x_t), targets(t_tok), targets(velocity))
      has_target = jnp.sum(targets(batch["gen_loss_mask"]), axis=-1) > 0
      weight = (t_slot.reshape(-1) <= train_config.pixel_loss_max_t).astype(jnp.float32)
      weight = weight * has_target.astype(jnp.float32)  # an empty slot of a packed row has none
      # Only each target's own pixels: a smaller image of a mixed-size batch is padded into
      # the canvas, and its padding tokens carry no loss (gen_loss_mask 0).
      pixel_mask = token_pixel_mask(
        targets(batch["gen_loss_mask"]), images.shape[2], images.shape[3]
      )
      l1, one_minus_ssim = pixel_loss_terms(
        decode_tokens(vae_params, x0_hat, latent_hw),
        images[:, IMAGES_PER_EXAMPLE - 1 :: IMAGES_PER_EXAMPLE].reshape((-1,) + images.shape[2:]),
        weight,
        pixel_mask,
      )
      l_ir = objectives.restoration_loss(
        rf, l1, one_minus_ssim, train_config.alpha_l1, train_config.beta_ssim
      )
      metrics.update(loss_l1=l1, loss_1m_ssim=one_minus_ssim)
    if with_ce:
      ce, accuracy = objectives.next_token_cross_entropy(outputs["logits"], ce_targets, ce_mask)
    else:
      ce = accuracy = jnp.zeros((), jnp.float32)
    loss = objectives.total_loss(l_ir, ce, train_config.lambda_iqa)
    metrics.update(loss=loss, loss_ir=l_ir, loss_ce=ce, token_accuracy=accuracy)
    return loss, metrics

  return loss_fn


def loss_counts(batch) -> dict:
  """What each term of `make_loss_fn`'s loss is a mean over, in `batch`: rectified-flow loss
  tokens ("rf"), description tokens of the CE and token accuracy ("ce"), target images with loss
  tokens of the pixel losses ("pixel"; their `t <= pixel_loss_max_t` selection aside). Gradient
  accumulation weights each micro-batch's means by these (`accumulate.py`)."""
  num_images = batch["vae_images"].shape[1]
  has_target = jnp.sum(target_tokens(batch["gen_loss_mask"], num_images), axis=-1) > 0
  return {
    "rf": jnp.sum(batch["gen_loss_mask"] > 0),
    "ce": jnp.sum(batch["und_loss_mask"] > 0),
    "pixel": jnp.sum(has_target),
  }


def make_grad_fn(loss_fn: Callable, train_config) -> Callable:
  """grad_fn(params, vae_params, batch, rng) -> (grads, metrics): the gradient of `loss_fn` with
  respect to the run's trainable subtree only (`split_params`: the stage's rule and
  `train.freeze`), the frozen subtree closed over as a constant, so no weight gradient of a
  frozen parameter is ever formed. `grads` has the trainable subtree's structure. With
  `train.grad_accum_steps` = k > 1 the batch is processed as k micro-batches whose gradients are
  summed (`accumulate.make_accumulated_grad_fn`: equal to the whole batch's)."""
  if accumulate.steps_of(train_config) > 1:
    return accumulate.make_accumulated_grad_fn(loss_fn, train_config, loss_counts)

  def grad_fn(params, vae_params, batch, rng):
    trainable, frozen = split_params(params, train_config)
    of_trainable = lambda t: loss_fn(merge_params(t, frozen), vae_params, batch, rng)
    return jax.grad(of_trainable, has_aux=True)(trainable)

  return grad_fn


def all_finite(*trees) -> jax.Array:
  """True (a scalar) when every floating leaf of `trees` is finite (no NaN, no Inf)."""
  leaves = [x for x in jax.tree_util.tree_leaves(trees) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def make_train_step(model, vae, optimizer, model_config, train_config) -> Callable:
  """Returns train_step(state, vae_params, batch, rng) -> (state, metrics); jit it with
  shardings and donate the state. `optimizer` is `state.make_optimizer(train_config)` (its
  updates cover the trainable subtree)."""
  grad_fn = make_grad_fn(make_loss_fn(model, vae, model_config, train_config), train_config)

  def train_step(state: TrainState, vae_params: Any, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    grads, metrics = grad_fn(state.params, vae_params, batch, rng)
    trainable, frozen = split_params(state.params, train_config)
    updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
    new_trainable = optax.apply_updates(trainable, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    finite = all_finite(metrics["loss"], metrics["grad_norm"], new_trainable)
    # A non-finite step keeps the previous parameters and optimizer state bit for bit (its
    # update is skipped); the step counter still advances: it counts batches consumed, which
    # keeps the checkpointed step, the data iterator and the per-step rng aligned.
    keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
    kept = keep(new_trainable, trainable)
    params = merge_params(kept, frozen)
    opt_state = keep(opt_state, state.opt_state)
    metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
    ema = state.ema
    if ema is not None:  # EMA of the trainable subtree; frozen parameters are copied as they are
      decay = float(train_config.ema_decay)
      ema_trainable = jax.tree_util.tree_map(
        lambda e, p: decay * e + (1.0 - decay) * p, split_params(ema, train_config)[0], kept
      )
      ema = merge_params(keep(ema_trainable, split_params(ema, train_config)[0]), frozen)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema=ema), metrics

  return train_step
