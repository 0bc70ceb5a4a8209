"""Stage 0: train the FLUX-layout autoencoder of `config.model.vae` on the training images, and
evaluate, save and load such a VAE through the FLUX `ae.safetensors` naming.

The CPU sizes (tiny, small) have no downloadable VAE; stage 0 trains theirs once and the package
ships the result (medq_jax/assets/vae/, docs/vae.md). Training reconstructs both images of every
train example (`high` and `low`, grey -> 3 channels in [-1, 1] as `layout.to_rgb` does) with

  L = l1_weight * L1(RGB, [0, 1] units) + ssim_weight * (1 - SSIM(grey)) + kl_weight * KL,

decoding a SAMPLE of the posterior (z = mean + exp(logvar / 2) * eps, as BAGEL encodes with
`FluxAutoEncoder.encode(images, rng)`); evaluation decodes the posterior MEAN
(`encode(images)` without rng, what MedQ-UNI's train step and inference use).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import linen as nn

from data_pipeline import loader as data_loader
from data_pipeline import precompute
from medq_jax import checkpoints
from medq_jax import layout as layout_lib
from medq_jax.convert import core
from medq_jax.convert.flux_vae import flux_vae_rules
from medq_jax.metrics import psnr, ssim
from medq_jax.models.vae import FluxAutoEncoder, downsample_factor

WEIGHTS_NAME = "ae.safetensors"
LOG_NAME = "vae_log.json"
FIELDS = ("high", "low")
# VAE fields that do not change the trained weights (the latent scaling is applied outside the
# encoder/decoder convolutions, and stage 0 decodes unscaled latents).
_SCALING_FIELDS = ("scale_factor", "shift_factor")
# vae_train fields that do not change the trained weights (logging and evaluation cadence), and
# those the compiled train step does not read (the seed enters as its rng argument).
_CADENCE = ("log_every", "eval_every", "eval_split", "eval_batch_size")
_NOT_IN_STEP = _CADENCE + ("seed",)


def _vae_config(model_config):
  """`config.model` or `config.model.vae` -> the VAE config."""
  return model_config.vae if "vae" in model_config else model_config


def _json(config) -> str:
  """A ConfigDict as canonical JSON (the key of the cached compiled functions)."""
  return json.dumps(config.to_dict(), sort_keys=True)


def _param_shapes(vae_config) -> dict[str, Any]:
  """Unboxed ShapeDtypeStructs of the FluxAutoEncoder params (no compute)."""
  factor = downsample_factor(vae_config)
  images = jnp.zeros((1, factor, factor, vae_config.in_channels), jnp.float32)
  shapes = jax.eval_shape(FluxAutoEncoder(vae_config).init, jax.random.key(0), images)
  return nn.unbox(shapes)["params"]


# The last layer of every residual branch: ResnetBlock conv2 and AttnBlock proj_out.
_RESIDUAL_OUTPUTS = ("conv2/kernel", "proj_out/kernel")


@functools.lru_cache(maxsize=8)
def _init_fn(vae_json: str):
  """jit(rng) -> FluxAutoEncoder variables, cached per VAE config (JSON)."""
  vae_config = ml_collections.ConfigDict(json.loads(vae_json))
  side = 2 * downsample_factor(vae_config)
  images = jnp.zeros((1, side, side, vae_config.in_channels), jnp.float32)
  return jax.jit(lambda rng: FluxAutoEncoder(vae_config).init(rng, images))


def init_vae_params(vae_config, rng: jax.Array, zero_init_residual: bool = False):
  """Fresh FluxAutoEncoder params (unboxed). `zero_init_residual` zeroes the last kernel of every
  residual branch (ResnetBlock conv2, AttnBlock proj_out), so that each block starts as the
  identity (Goyal et al. 2017, "zero gamma"); stage 0 converges faster from there."""
  params = nn.unbox(_init_fn(_json(vae_config))(rng))["params"]
  if not zero_init_residual:
    return params
  flat = core.flatten(params)
  for path in flat:
    if path.endswith(_RESIDUAL_OUTPUTS):
      flat[path] = jnp.zeros_like(flat[path])
  return core.unflatten(flat)


# ------------------------------------------------------------------------------- save / load


def save_vae_params(vae_params: Any, path: str) -> str:
  """Writes `vae_params` as a FLUX-named `ae.safetensors` (float32), atomically; returns path."""
  if not path.endswith(".safetensors"):
    raise ValueError(f"{path}: a VAE weights file must end in .safetensors")
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  partial = os.path.join(directory, f".partial-{os.getpid()}-{os.path.basename(path)}")
  (written,) = core.save_safetensors(core.export_params(vae_params, flux_vae_rules()), partial)
  os.chmod(written, 0o644)  # a package data file, readable by all (the writer makes it 0600)
  os.replace(written, path)
  return path


def _checkpoint_keys(shapes) -> dict[str, str]:
  """Flax path -> FLUX checkpoint key for every parameter (flux rules have no stacked params)."""
  paths = list(core.flatten(shapes))
  views = jax.tree.map(lambda s: np.broadcast_to(np.float32(0), s.shape), shapes)
  keys = [key for key, _ in core.export_params(views, flux_vae_rules())]
  return dict(zip(paths, keys, strict=True))


def load_vae_params(path: str, model_config) -> dict[str, Any]:
  """`checkpoints.load_vae_params` (the one loader of a FLUX-named ae.safetensors: FLUX's,
  BAGEL's, UniMedVL's or one stage 0 wrote) whose error also lists the checkpoint keys the file
  lacks. `model_config` is `config.model` (or its .vae).

  Raises FileNotFoundError naming the file, or checkpoints.CheckpointError naming the file, every
  mismatching parameter and the missing FLUX keys.
  """
  from safetensors import safe_open

  vae_config = _vae_config(model_config)
  try:
    return checkpoints.load_vae_params(path, ml_collections.ConfigDict({"vae": vae_config}))
  except checkpoints.CheckpointError as error:
    with safe_open(path, framework="np") as handle:
      present = set(handle.keys())
    absent = sorted(set(_checkpoint_keys(_param_shapes(vae_config)).values()) - present)
    if not absent:
      raise
    names = ", ".join(absent[:25]) + (f" and {len(absent) - 25} more" if len(absent) > 25 else "")
    raise checkpoints.CheckpointError(
      f"{error}\n{len(absent)} FLUX keys missing from {path}: {names}"
    ) from None


# ------------------------------------------------------------------------------- images


def to_rgb_batch(grey: np.ndarray) -> np.ndarray:
  """Grey images [N, H, W] in [0, 1] -> [N, H, W, 3] in [-1, 1], by `layout.to_rgb`."""
  grey = np.asarray(grey, np.float32)
  size = grey.shape[-1]
  return np.stack([layout_lib.to_rgb(g, size, "image", str(i)) for i, g in enumerate(grey)])


def grey01(rgb: jax.Array) -> jax.Array:
  """[..., H, W, 3] in [-1, 1] -> [..., H, W] in [0, 1] (channel mean, clipped)."""
  return jnp.clip((jnp.mean(rgb, axis=-1) + 1.0) / 2.0, 0.0, 1.0)


def _reconstruct(module: FluxAutoEncoder, images: jax.Array, rng: jax.Array | None):
  """(decoded images, posterior mean, logvar); decodes a posterior sample when rng is given.

  Equal to decode(encode(images, rng)): the FLUX scale/shift cancel between the two."""
  mean, logvar = module.encode_moments(images)
  z = mean
  if rng is not None:
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
  return module.decoder(z), mean, logvar


def _symmetries(images: jax.Array, rng: jax.Array) -> jax.Array:
  """Per image, a random element of the square's 8 symmetries (flips, transpose)."""
  flips = jax.random.bernoulli(rng, 0.5, (3, images.shape[0], 1, 1, 1))
  images = jnp.where(flips[0], images[:, :, ::-1], images)
  images = jnp.where(flips[1], images[:, ::-1], images)
  if images.shape[1] == images.shape[2]:
    images = jnp.where(flips[2], jnp.swapaxes(images, 1, 2), images)
  return images


def _intensity(grey: jax.Array, rng: jax.Array, max_gamma: float) -> jax.Array:
  """Per image [N, H, W] in [0, 1]: a random gamma in [1/max_gamma, max_gamma] (log-uniform),
  then an inversion (1 - x) with probability 1/2."""
  rng_gamma, rng_invert = jax.random.split(rng)
  count = grey.shape[0]
  log_gamma = jax.random.uniform(rng_gamma, (count, 1, 1), minval=-1.0, maxval=1.0)
  grey = jnp.power(jnp.clip(grey, 1e-6, 1.0), jnp.exp(log_gamma * jnp.log(max_gamma)))
  invert = jax.random.bernoulli(rng_invert, 0.5, (count, 1, 1))
  return jnp.where(invert, 1.0 - grey, grey)


def _synthetic(rng: jax.Array, count: int, size: int) -> jax.Array:
  """`count` random multi-scale textures [count, size, size] in [0, 1]: white noise at sides
  size/16 .. size, bilinearly upsampled, summed with random weights, min-max scaled."""
  sides = [side for side in (size // 16, size // 8, size // 4, size // 2, size) if side >= 2]
  keys = jax.random.split(rng, len(sides) + 1)
  weights = jax.random.uniform(keys[0], (len(sides), count, 1, 1)) ** 2
  total = jnp.zeros((count, size, size))
  for index, side in enumerate(sides):
    noise = jax.random.normal(keys[index + 1], (count, side, side))
    total = total + weights[index] * jax.image.resize(noise, (count, size, size), "linear")
  low = total.min(axis=(1, 2), keepdims=True)
  high = total.max(axis=(1, 2), keepdims=True)
  return (total - low) / jnp.maximum(high - low, 1e-6)


def _random_crops(images: jax.Array, rng: jax.Array, size: int) -> jax.Array:
  """Per image [N, H, W, C], a random size x size window."""
  count, height, width = images.shape[:3]
  if size > min(height, width):
    raise ValueError(f"vae_train.crop_size={size} exceeds the images ({height}x{width})")
  rng_y, rng_x = jax.random.split(rng)
  ys = jax.random.randint(rng_y, (count,), 0, height - size + 1)
  xs = jax.random.randint(rng_x, (count,), 0, width - size + 1)
  crop = lambda image, y, x: jax.lax.dynamic_slice(image, (y, x, 0), (size, size, image.shape[-1]))
  return jax.vmap(crop)(images, ys, xs)


def augment(images: jax.Array, rng: jax.Array, tc) -> jax.Array:
  """Training images [N, H, W, 3] in [-1, 1] (grey in 3 channels) -> augmented, same form:
  random crops (`crop_size` > 0: train on windows, evaluate on whole images), symmetries (`flip_augment`), gamma/inversion (`intensity_augment`, `max_gamma`), and a
  fraction `synthetic_fraction` of the batch replaced by random textures (so that the VAE
  learns to code any local content, not only the few training anatomies)."""
  rng_crop, rng_flip, rng_intensity, rng_synthetic = jax.random.split(rng, 4)
  if tc.crop_size:
    images = _random_crops(images, rng_crop, tc.crop_size)
  if tc.flip_augment:
    images = _symmetries(images, rng_flip)
  grey = (images[..., 0] + 1.0) / 2.0
  if tc.intensity_augment:
    grey = _intensity(grey, rng_intensity, tc.max_gamma)
  replaced = int(round(tc.synthetic_fraction * grey.shape[0]))
  if replaced and grey.shape[1] == grey.shape[2]:
    textures = _synthetic(rng_synthetic, replaced, grey.shape[1])
    grey = jnp.concatenate([grey[: grey.shape[0] - replaced], textures])
  return jnp.repeat((grey * 2.0 - 1.0)[..., None], images.shape[-1], axis=-1)


# ------------------------------------------------------------------------------- evaluation


@functools.lru_cache(maxsize=8)
def _mean_reconstruction_fn(vae_config_json: str):
  """jit(params, images [N, H, W, 3] in [-1, 1]) -> grey reconstructions [N, H, W] in [0, 1],
  through the public encode (posterior mean) / decode path that MedQ-UNI uses. Cached per VAE
  config (JSON) so that repeated evaluations reuse one compilation."""
  model = FluxAutoEncoder(ml_collections.ConfigDict(json.loads(vae_config_json)))

  @jax.jit
  def reconstruct(params, images):
    latents = model.apply({"params": params}, images, method=FluxAutoEncoder.encode)
    return grey01(model.apply({"params": params}, latents, method=FluxAutoEncoder.decode))

  return reconstruct


def _split_batches(data_config, split: str, batch_size: int):
  return data_loader.one_pass(data_config, split, batch_size)


def _summary(psnrs: np.ndarray, ssims: np.ndarray) -> dict[str, float]:
  return dict(
    psnr_mean=float(np.mean(psnrs)),
    psnr_std=float(np.std(psnrs)),
    ssim_mean=float(np.mean(ssims)),
    ssim_std=float(np.std(ssims)),
    n=int(psnrs.size),
  )


def evaluate_vae(
  vae_params: Any,
  model_config,
  data_config,
  split: str = "val",
  *,
  fields: tuple[str, ...] = FIELDS,
  batch_size: int = 32,
) -> dict[str, Any]:
  """Reconstruction quality of a VAE (the ceiling of any restoration through it).

  Every image of `fields` of every example of `split` (one pass, in order) is encoded to its
  posterior mean and decoded; PSNR and SSIM (data range 1, grey [0, 1], medq_jax.metrics) are
  taken against the input. Returns {psnr_mean, psnr_std, ssim_mean, ssim_std, n} over all those
  images, plus `by_field`: the same per field. `model_config` is `config.model` (or its .vae).
  """
  vae_config = _vae_config(model_config)
  reconstruct = _mean_reconstruction_fn(_json(vae_config))
  values = {field: ([], []) for field in fields}
  for batch in _split_batches(data_config, split, batch_size):
    for field in fields:
      grey = np.asarray(batch[field], np.float32)
      count = grey.shape[0]
      padded = np.concatenate([grey, np.repeat(grey[-1:], batch_size - count, axis=0)])
      recon = reconstruct(vae_params, to_rgb_batch(padded))[:count]
      target = jnp.asarray(np.clip(grey, 0.0, 1.0))
      values[field][0].append(np.asarray(psnr(recon, target)))
      values[field][1].append(np.asarray(ssim(recon, target, per_image=True)))
  if not any(values[field][0] for field in fields):
    raise ValueError(f"split: {split!r} of {data_config.data_dir} has no examples to evaluate")
  by_field = {f: _summary(np.concatenate(p), np.concatenate(s)) for f, (p, s) in values.items()}
  everything = _summary(
    np.concatenate([np.concatenate(p) for p, _ in values.values()]),
    np.concatenate([np.concatenate(s) for _, s in values.values()]),
  )
  return dict(everything, by_field=by_field)


@functools.lru_cache(maxsize=8)
def _posterior_mean_fn(vae_json: str):
  """jit(params, images) -> unscaled posterior means, cached per VAE config (JSON)."""
  model = FluxAutoEncoder(ml_collections.ConfigDict(json.loads(vae_json)))
  return jax.jit(
    lambda p, x: model.apply({"params": p}, x, method=FluxAutoEncoder.encode_moments)[0]
  )


def latent_statistics(vae_params: Any, model_config, data_config, split: str = "train"):
  """Mean and std of the unscaled posterior means over `split`'s images (both fields), and the
  FLUX-style scale_factor = 1/std, shift_factor = mean that would make latents ~N(0, 1)."""
  moments = _posterior_mean_fn(_json(_vae_config(model_config)))
  total, total_sq, count = 0.0, 0.0, 0
  for batch in _split_batches(data_config, split, 32):
    for field in FIELDS:
      z = np.asarray(moments(vae_params, to_rgb_batch(batch[field])), np.float64)
      total, total_sq, count = total + z.sum(), total_sq + (z * z).sum(), count + z.size
  mean = total / count
  std = float(np.sqrt(max(total_sq / count - mean * mean, 1e-12)))
  return dict(
    mean=float(mean), std=std, scale_factor=float(1.0 / std), shift_factor=float(mean), split=split
  )


# ------------------------------------------------------------------------------- training


def fingerprint(config) -> str:
  """Hash of everything that determines the trained weights: the VAE layout (not its latent
  scaling), `config.vae_train` but its logging/eval cadence, the data and its shuffle seed."""
  vae = {k: v for k, v in config.model.vae.to_dict().items() if k not in _SCALING_FIELDS}
  train = {k: v for k, v in config.vae_train.to_dict().items() if k not in _CADENCE}
  content = dict(
    vae=vae,
    train=train,
    data=precompute.fingerprint(config.data),
    shuffle_seed=config.data.shuffle_seed,
  )
  return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _optimizer(tc):
  """(optax adam with global-norm clipping, its learning-rate schedule)."""
  if not 0 <= tc.warmup_steps < tc.steps:
    raise ValueError(
      f"vae_train.warmup_steps={tc.warmup_steps} must be in [0, vae_train.steps={tc.steps})"
    )
  schedule = optax.warmup_cosine_decay_schedule(
    0.0,
    tc.learning_rate,
    tc.warmup_steps,
    tc.steps,
    end_value=tc.learning_rate * tc.end_learning_rate_fraction,
  )
  return optax.chain(optax.clip_by_global_norm(tc.grad_clip_norm), optax.adam(schedule)), schedule


def make_train_step(vae_config, tc):
  """(jit(params, opt_state, images [N, H, W, 3] in [-1, 1], rng) -> (params, opt_state,
  metrics), the optimizer, its schedule) for `config.model.vae` and `config.vae_train`."""
  step_fields = {k: v for k, v in tc.to_dict().items() if k not in _NOT_IN_STEP}
  return _make_train_step(_json(vae_config), json.dumps(step_fields, sort_keys=True))


@functools.lru_cache(maxsize=8)
def _make_train_step(vae_json: str, tc_json: str):
  """Cached per config (JSON) so that runs of one process share one compilation."""
  model = FluxAutoEncoder(ml_collections.ConfigDict(json.loads(vae_json)))
  tc = ml_collections.ConfigDict(json.loads(tc_json))
  optimizer, schedule = _optimizer(tc)

  def loss_fn(params, images, rng):
    recon, mean, logvar = model.apply({"params": params}, images, rng, method=_reconstruct)
    l1 = jnp.mean(jnp.abs(recon - images)) / 2.0
    recon_grey = (jnp.mean(recon, axis=-1) + 1.0) / 2.0
    target_grey = (jnp.mean(images, axis=-1) + 1.0) / 2.0
    one_minus_ssim = 1.0 - ssim(recon_grey, target_grey, data_range=1.0)
    kl = 0.5 * jnp.mean(jnp.sum(mean**2 + jnp.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3)))
    loss = tc.l1_weight * l1 + tc.ssim_weight * one_minus_ssim + tc.kl_weight * kl
    metrics = dict(
      loss=loss,
      l1=l1,
      one_minus_ssim=one_minus_ssim,
      kl=kl,
      psnr=jnp.mean(psnr(jnp.clip(recon_grey, 0.0, 1.0), target_grey)),
    )
    return loss, metrics

  @jax.jit
  def train_step(params, opt_state, images, rng):
    rng_aug, rng_z = jax.random.split(rng)
    images = augment(images, rng_aug, tc)
    grads, metrics = jax.grad(loss_fn, has_aux=True)(params, images, rng_z)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return optax.apply_updates(params, updates), opt_state, metrics

  return train_step, optimizer, schedule


def _result(log: dict, weights: str, log_path: str, reused: bool) -> dict:
  final = log["final_eval"]
  keys = ("psnr_mean", "psnr_std", "ssim_mean", "ssim_std", "n")
  return dict(
    {k: final[k] for k in keys},
    path=weights,
    log_path=log_path,
    steps=log["steps"],
    wall_time_s=log["wall_time_s"],
    fingerprint=log["fingerprint"],
    reused=reused,
  )


def _existing(directory: str, config_fingerprint: str) -> dict | None:
  """The log of a finished run in `directory` with this fingerprint; None when there is none;
  ValueError when the directory holds a run of another config."""
  weights, log_path = os.path.join(directory, WEIGHTS_NAME), os.path.join(directory, LOG_NAME)
  if not (os.path.exists(weights) and os.path.exists(log_path)):
    return None
  with open(log_path) as f:
    log = json.load(f)
  if log.get("fingerprint") != config_fingerprint:
    raise ValueError(
      f"{directory}: holds a VAE trained with another config (fingerprint "
      f"{log.get('fingerprint')} != {config_fingerprint}); choose another workdir or delete it"
    )
  return log


def train_vae(config, workdir: str, command: str | None = None) -> dict:
  """Trains `config.model.vae` per `config.vae_train` on `config.data`'s train split (both
  images of every example), evaluates it on `config.vae_train.eval_split`, and writes
  `<workdir>/vae/ae.safetensors` (FLUX names, float32) and `<workdir>/vae/vae_log.json`.

  Idempotent: when both files exist with this config's fingerprint, returns them untouched.
  Deterministic for `vae_train.seed` (initialisation, posterior samples, flips) and the data's
  `shuffle_seed`. Returns {path, log_path, psnr_mean, psnr_std, ssim_mean, ssim_std, n, steps,
  wall_time_s, fingerprint, reused}; the PSNR/SSIM are the final evaluation's.
  """
  tc = config.vae_train
  vae_config = config.model.vae
  directory = os.path.join(workdir, "vae")
  weights, log_path = os.path.join(directory, WEIGHTS_NAME), os.path.join(directory, LOG_NAME)
  config_fingerprint = fingerprint(config)
  log = _existing(directory, config_fingerprint)
  if log is not None:
    logging.info("%s: a VAE with this config is already trained; reusing it", directory)
    return _result(log, weights, log_path, reused=True)

  start = time.time()
  train_step, optimizer, schedule = make_train_step(vae_config, tc)
  init_rng, loop_rng = jax.random.split(jax.random.key(tc.seed))
  params = init_vae_params(vae_config, init_rng, tc.zero_init_residual)
  opt_state = optimizer.init(params)
  num_params = int(sum(x.size for x in jax.tree.leaves(params)))
  logging.info(
    "stage 0: training a %.2fM-parameter VAE (x%d) for %d steps of %d images",
    num_params / 1e6,
    downsample_factor(vae_config),
    tc.steps,
    2 * tc.batch_size,
  )
  batches = iter(
    data_loader.make_loader(
      config.data,
      "train",
      worker_count=0,
      batch_size=tc.batch_size,
      shuffle=True,
      shard_index=0,
      shard_count=1,
    )
  )
  curve, eval_curve = [], []
  pending, window_start = [], time.time()
  for step in range(1, tc.steps + 1):
    batch = next(batches)
    images = to_rgb_batch(np.concatenate([batch[f] for f in FIELDS]))
    params, opt_state, metrics = train_step(
      params, opt_state, images, jax.random.fold_in(loop_rng, step)
    )
    pending.append(metrics)
    if step % tc.log_every == 0 or step == tc.steps:
      means = {k: float(np.mean([float(m[k]) for m in pending])) for k in pending[0]}
      rate = len(pending) * images.shape[0] / (time.time() - window_start)
      point = dict(step=step, lr=float(schedule(step)), elapsed_s=time.time() - start, **means)
      curve.append(point)
      logging.info(
        "step %d: loss=%.4f l1=%.4f 1-ssim=%.4f kl=%.1f train_psnr=%.2f lr=%.2e (%.1f img/s)",
        step,
        means["loss"],
        means["l1"],
        means["one_minus_ssim"],
        means["kl"],
        means["psnr"],
        point["lr"],
        rate,
      )
      pending, window_start = [], time.time()
    if step % tc.eval_every == 0 or step == tc.steps:
      result = evaluate_vae(
        params, vae_config, config.data, tc.eval_split, batch_size=tc.eval_batch_size
      )
      eval_curve.append(dict(step=step, elapsed_s=time.time() - start, **result))
      logging.info(
        "step %d: %s PSNR %.2f +- %.2f dB, SSIM %.4f (n=%d)",
        step,
        tc.eval_split,
        result["psnr_mean"],
        result["psnr_std"],
        result["ssim_mean"],
        result["n"],
      )
      window_start = time.time()

  final = eval_curve[-1]
  stats = latent_statistics(params, vae_config, config.data, "train")
  save_vae_params(params, weights)
  log = dict(
    fingerprint=config_fingerprint,
    command=command,
    size=config.model.get("size", ""),
    seed=tc.seed,
    steps=tc.steps,
    images_per_step=2 * tc.batch_size,
    num_params=num_params,
    downsample=downsample_factor(vae_config),
    encoding=dict(train="posterior sample", eval="posterior mean"),
    config=dict(
      vae=vae_config.to_dict(),
      vae_train=tc.to_dict(),
      data=dict(
        name=config.data.name,
        version=config.data.version,
        source=config.data.source,
        image_size=config.data.image_size,
        data_dir=config.data.data_dir,
        shuffle_seed=config.data.shuffle_seed,
        fingerprint=precompute.fingerprint(config.data),
      ),
    ),
    curve=curve,
    eval_curve=eval_curve,
    final_eval=dict(final, split=tc.eval_split),
    latent_stats=stats,
    wall_time_s=time.time() - start,
    jax_version=jax.__version__,
    backend=jax.default_backend(),
    machine=f"{platform.machine()}, {os.cpu_count()} CPUs",
  )
  partial = f"{log_path}.partial"
  with open(partial, "w") as f:
    json.dump(log, f, indent=1, default=lambda x: list(x) if isinstance(x, tuple) else str(x))
  os.replace(partial, log_path)
  logging.info("stage 0: wrote %s and %s", weights, log_path)
  return _result(log, weights, log_path, reused=False)
