"""Gradient accumulation over micro-batches inside one jitted train step (`train.grad_accum_steps`).

The global batch [B, ...] is cut into k contiguous micro-batches [k, B/k, ...]; a `lax.scan` runs
forward and backward on one micro-batch at a time and sums the gradients of the trainable subtree,
so activation memory is that of B/k rows. Everything after the gradient (clipping, AdamW, the
NaN/Inf skip, the EMA, the step counter, checkpoints, logs, the data iterator) runs once per
optimizer step, unchanged (a scan, not `optax.MultiSteps`: MultiSteps applies one micro-batch per
train-step call, so the step counter, checkpoints, logs, per-step rng and NaN skip would all count
micro-batches, and its accumulator would live in the checkpointed optimizer state).

Equal to one step on the whole batch, not only in expectation:
- Losses are normalised as the big batch's: each term's micro-batch mean is weighted by its share
  of the batch's count (rectified flow: loss tokens; CE and token accuracy: description tokens;
  pixel losses: target images), so the weighted sum is the big batch's per-token / per-image mean
  exactly. The pixel losses' `t <= train.pixel_loss_max_t` selection is not known before the
  forward pass: with max_t < 1 they are weighted by target images, an approximation.
- Draws: micro-batch m's key (`micro_key`) draws exactly rows [m B/k, (m+1) B/k) of what the
  step's key draws for the whole batch (JAX's partitionable threefry: element i of a draw depends
  on the key and i alone), for every draw whose leading axis is the rows (t, eps, the VAE
  posterior noise). So a run's noise does not depend on `grad_accum_steps`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import random as jax_random

from medq_jax import objectives
from medq_jax.train.state import merge_params, split_params

_BASE = jax_random.threefry_prng_impl
# The loss terms and metrics this module knows how to weight (term -> the count it is a mean
# over); a new loss_* metric must be added here, or accumulation would drop it from the gradient.
WEIGHTED = {
  "loss_rf": "rf",
  "loss_l1": "pixel",
  "loss_1m_ssim": "pixel",
  "loss_ce": "ce",
  "token_accuracy": "ce",
}
DERIVED = ("loss", "loss_ir")  # recombined from the weighted terms


def steps_of(train_config) -> int:
  """`train.grad_accum_steps` (1: no accumulation)."""
  return int(train_config.get("grad_accum_steps", 1) or 1)


@functools.cache
def _micro_impl(steps: int):
  """A PRNG implementation whose key is (threefry key, micro-batch index m): a draw of shape
  [n, ...] returns rows [m n, (m+1) n) of the threefry draw of shape [steps * n, ...]."""

  def seed(value):
    return jnp.concatenate([_BASE.seed(value), jnp.zeros((1,), jnp.uint32)])

  def split(data, shape):
    children = _BASE.split(data[:2], shape)
    return jnp.concatenate([children, jnp.broadcast_to(data[2], shape + (1,))], axis=-1)

  def fold_in(data, value):
    return jnp.concatenate([_BASE.fold_in(data[:2], value), data[2:]])

  def random_bits(data, bit_width, shape):
    if not shape:
      return _BASE.random_bits(data[:2], bit_width, shape)
    rows = shape[0]
    whole = _BASE.random_bits(data[:2], bit_width, (steps * rows,) + tuple(shape[1:]))
    return lax.dynamic_slice_in_dim(whole, data[2].astype(jnp.int32) * rows, rows, axis=0)

  return jax_random.define_prng_impl(
    key_shape=(3,),
    seed=seed,
    split=split,
    random_bits=random_bits,
    fold_in=fold_in,
    name=f"threefry_microbatch{steps}",
    tag=f"mb{steps}",
  )


def micro_key(key: jax.Array, index, steps: int) -> jax.Array:
  """The key of micro-batch `index` of `steps` (see `_micro_impl`); `key` is a threefry key."""
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)
  if str(jax.random.key_impl(key)) != _BASE.name:
    raise ValueError(
      f"train.grad_accum_steps needs the threefry PRNG, got {jax.random.key_impl(key)}"
    )
  if not jax.config.jax_threefry_partitionable:
    logging.warning(
      "jax_threefry_partitionable is off: accumulated micro-batches draw valid noise, but not "
      "the whole batch's draws"
    )
  data = jnp.concatenate([jax.random.key_data(key), jnp.asarray(index, jnp.uint32)[None]])
  return jax.random.wrap_key_data(data, impl=_micro_impl(steps))


def split_batch(batch, steps: int):
  """Every leaf [B, ...] -> [steps, B / steps, ...] (contiguous micro-batches), each micro-batch's
  rows constrained to the data-parallel axes (a no-op outside a mesh)."""
  rows = {leaf.shape[0] for leaf in jax.tree_util.tree_leaves(batch)}
  if len(rows) != 1:
    raise ValueError(f"batch fields disagree on the batch size: {sorted(rows)}")
  (rows,) = rows
  if rows % steps:
    raise ValueError(f"a batch of {rows} rows does not split into {steps} micro-batches")

  def cut(leaf):
    leaf = leaf.reshape((steps, rows // steps) + leaf.shape[1:])
    return nn.with_logical_constraint(leaf, (None, "act_batch") + (None,) * (leaf.ndim - 2))

  return jax.tree_util.tree_map(cut, batch)


def _weighted_objective(metrics, weights, train_config):
  """The micro-batch's share of the big batch's loss: every term's mean times its count share."""
  unknown = sorted(k for k in metrics if k.startswith("loss") and k not in (*WEIGHTED, *DERIVED))
  if unknown:
    raise NotImplementedError(
      f"gradient accumulation does not know how to weight the loss terms {unknown} "
      "(medq_jax/train/accumulate.py WEIGHTED)"
    )
  zero = jnp.zeros((), jnp.float32)
  term = lambda name: metrics.get(name, zero) * weights[WEIGHTED[name]]
  l_ir = objectives.restoration_loss(
    term("loss_rf"),
    term("loss_l1"),
    term("loss_1m_ssim"),
    train_config.alpha_l1,
    train_config.beta_ssim,
  )
  return objectives.total_loss(l_ir, term("loss_ce"), train_config.lambda_iqa), l_ir


def make_accumulated_grad_fn(loss_fn: Callable, train_config, counts_fn: Callable) -> Callable:
  """grad_fn(params, vae_params, batch, rng) -> (grads, metrics), as `step.make_grad_fn`, over
  `steps_of(train_config)` micro-batches. `counts_fn(batch) -> {"rf", "ce", "pixel"}` gives the
  counts each loss term of `loss_fn` is a mean over (`step.loss_counts`). The metrics are the
  big batch's (loss terms weighted as the loss; any other metric: the mean over micro-batches)."""
  steps = steps_of(train_config)

  def grad_fn(params, vae_params, batch, rng):
    trainable, frozen = split_params(params, train_config)
    micro = split_batch(batch, steps)
    counts = jax.vmap(counts_fn)(micro)  # term -> [steps]
    weights = {
      name: c.astype(jnp.float32) / jnp.maximum(jnp.sum(c.astype(jnp.float32)), 1.0)
      for name, c in counts.items()
    }

    def one(grads, xs):
      index, batch_m, weights_m = xs
      key = micro_key(rng, index, steps)

      def objective(t):
        _, metrics = loss_fn(merge_params(t, frozen), vae_params, batch_m, key)
        loss, l_ir = _weighted_objective(metrics, weights_m, train_config)
        return loss, dict(metrics, loss=loss, loss_ir=l_ir)

      g, metrics = jax.grad(objective, has_aux=True)(trainable)
      return jax.tree_util.tree_map(jnp.add, grads, g), metrics

    zeros = jax.tree_util.tree_map(jnp.zeros_like, trainable)
    grads, per_micro = lax.scan(one, zeros, (jnp.arange(steps), micro, weights))
    metrics = {}
    for name, values in per_micro.items():
      if name in WEIGHTED:
        metrics[name] = jnp.sum(values * weights[WEIGHTED[name]])
      elif name in DERIVED:
        metrics[name] = jnp.sum(values)  # already weighted shares
      else:
        metrics[name] = jnp.mean(values)
    return grads, metrics

  return grad_fn
