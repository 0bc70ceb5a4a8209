"""Gradient accumulation (train.grad_accum_steps): k micro-batches in one jitted step equal one
step on the whole batch (gradients, logged loss terms, parameters after the update) within fp32
tolerance, with rows whose loss-token counts differ (so an unweighted mean of micro-batch means
would not be equal); micro-batch keys draw the whole batch's noise rows; a NaN in one micro-batch
skips the whole update; a batch that does not split is one config error."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import packing_testlib as lib

from medq_jax import layout as layout_lib
from medq_jax.convert.core import flatten
from medq_jax.train import accumulate, config_checks
from medq_jax.train import state as state_lib
from medq_jax.train import step as step_lib

ROWS = 4


@pytest.fixture(scope="module")
def setup():
  """Tiny stage 2 (CE on), perturbed parameters, 4 rows with descriptions of different lengths;
  row 1 has no rectified-flow loss tokens (as an empty packed slot), so micro-batches hold
  different numbers of rf tokens, CE tokens and target images."""
  config = lib.config(2)
  model, vae, params, vae_params = lib.perturbed_models(config)
  batch = layout_lib.collate(lib.single_rows(2, ROWS))
  batch["gen_loss_mask"][1] = 0.0
  per_row = jax.vmap(step_lib.loss_counts)({k: v[:, None] for k, v in batch.items()})
  assert len(set(np.asarray(per_row["ce"]).tolist())) > 1  # uneven on purpose
  assert int(per_row["rf"][1]) == 0 and int(per_row["pixel"][1]) == 0
  return config, model, vae, params, vae_params, batch


def _config(config, steps):
  train = config.train.copy_and_resolve_references()
  train.grad_accum_steps = steps
  return train


@pytest.fixture(scope="module")
def steps_run(setup):
  """k -> (jitted train step, state after two steps, metrics of each): the real AdamW step
  (its learning rate is 0 at step 0, so the second step is the first that moves parameters)."""
  config, model, vae, params, vae_params, batch = setup
  runs = {}
  for k in (1, 2, 4):
    train = _config(config, k)
    optimizer = state_lib.make_optimizer(train)
    step = jax.jit(step_lib.make_train_step(model, vae, optimizer, config.model, train))
    state, history = state_lib.create_train_state(params, optimizer), []
    for _ in range(2):
      state, metrics = step(state, vae_params, batch, jax.random.key(9))
      history.append(jax.device_get(metrics))
    runs[k] = (step, jax.device_get(state), history)
  return runs


def _first_moment(state):
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  (adam,) = [s for s in jax.tree_util.tree_leaves(state.opt_state, is_leaf=is_adam) if is_adam(s)]
  return flatten(adam.mu)


@pytest.mark.parametrize("steps", [2, 4])
def test_accumulation_equals_the_whole_batch(setup, steps_run, steps):
  """Logged loss terms, gradient norm, AdamW's first moment (a running sum of the gradients) and
  the parameters after the updates. Row 1 has no rf tokens, so a micro-batch mean that were not
  weighted by its count would differ (k=4: that micro-batch's rf mean is 0)."""
  params = setup[3]
  (_, big, big_history), (_, acc, history) = steps_run[1], steps_run[steps]
  assert int(acc.step) == int(big.step) == 2  # optimizer steps, not micro-batches
  for big_metrics, metrics in zip(big_history, history):
    assert float(metrics["nonfinite"]) == 0
    for name in (
      "loss",
      "loss_rf",
      "loss_l1",
      "loss_1m_ssim",
      "loss_ce",
      "loss_ir",
      "token_accuracy",
      "grad_norm",
    ):
      np.testing.assert_allclose(
        metrics[name], big_metrics[name], rtol=5e-5, atol=1e-7, err_msg=name
      )
  big_mu, mu = _first_moment(big), _first_moment(acc)
  assert set(big_mu) == set(mu)
  scale = max(float(np.abs(g).max()) for g in big_mu.values())
  for name, g in big_mu.items():
    np.testing.assert_allclose(mu[name], g, rtol=1e-4, atol=1e-6 * scale, err_msg=name)
  moved = 0
  for name, value in flatten(big.params).items():
    np.testing.assert_allclose(flatten(acc.params)[name], value, rtol=1e-5, atol=1e-6)
    moved += not np.array_equal(value, np.asarray(flatten(params)[name]))
  assert moved == len(flatten(params))  # stage 2: every parameter moved


def test_micro_keys_draw_the_whole_batch_rows():
  """Every draw whose leading axis is the rows (t [B, K], eps [B, L, D], VAE noise [2B, ...])."""
  key = jax.random.fold_in(jax.random.key(3), 7)
  steps, rows = 4, 3

  def draws(k, n):
    a, b, c = jax.random.split(k, 3)
    return (
      jax.random.normal(a, (n, 2)),
      jax.random.uniform(b, (n, 5, 6)),
      jax.random.normal(c, (2 * n, 4, 4, 3)),
    )

  whole = draws(key, steps * rows)
  per_micro = jax.jit(
    lambda k: jax.lax.map(lambda m: draws(accumulate.micro_key(k, m, steps), rows), jnp.arange(4))
  )(key)
  for w, m in zip(whole, per_micro):
    assert np.array_equal(np.asarray(w), np.asarray(m).reshape(w.shape))
  assert not np.array_equal(np.asarray(per_micro[0][0]), np.asarray(per_micro[0][1]))


def test_nan_in_one_micro_batch_skips_the_whole_update(setup, steps_run):
  config, model, vae, params, vae_params, batch = setup
  step, state, _ = steps_run[2]
  bad = {k: np.array(v) for k, v in batch.items()}
  bad["vae_images"][3] = np.nan  # the second micro-batch only
  after, metrics = step(jax.device_put(state), vae_params, bad, jax.random.key(1))
  assert float(metrics["nonfinite"]) == 1 and int(after.step) == int(state.step) + 1
  for a, b in zip(jax.tree_util.tree_leaves(after), jax.tree_util.tree_leaves(state)):
    if a.dtype != np.int32:
      assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
  "batch, steps, mesh, fragment",
  [
    (6, 4, (1, 1, 1), "train.batch_size=6 is not divisible by train.grad_accum_steps=4"),
    (8, 2, (1, 8, 1), "multiple of 16"),
  ],
)
def test_a_batch_that_does_not_split_is_one_config_error(batch, steps, mesh, fragment):
  config = lib.config(1)
  config.train.batch_size, config.train.grad_accum_steps = batch, steps
  config.mesh.shape = mesh
  with pytest.raises(config_checks.ConfigError, match=fragment) as error:
    config_checks.check_mesh_and_batch(config, num_devices=int(np.prod(mesh)))
  assert "\n" not in str(error.value)
  config.train.grad_accum_steps = 0
  with pytest.raises(config_checks.ConfigError, match="grad_accum_steps=0"):
    config_checks.check_numbers(config)
  config.train.grad_accum_steps, config.train.batch_size = 2, 16
  config_checks.check_mesh_and_batch(config, num_devices=int(np.prod(mesh)))  # fine
