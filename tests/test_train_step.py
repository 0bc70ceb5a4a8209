"""The train step's gradient scope and losses: stage 1 differentiates the gen parameters alone
(no weight gradient of an und parameter is formed; und parameters stay bit-identical), pixel
losses keep their gradient outside the image range, the VAE posterior is sampled in training."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import medq_uni
from medq_jax import layout as layout_lib
from medq_jax.convert.core import flatten
from medq_jax.models.medq_uni import init_batch
from medq_jax.train import state as state_lib
from medq_jax.train import step as step_lib

SPECIAL = dict(pad=0, im_start=1, im_end=2, vision_start=3, vision_end=4)


class _CharTokenizer:
  def encode(self, text, add_special_tokens=False):
    return [5 + (ord(c) % 400) for c in text]


def _setup(stage):
  """(config, setup, batch) on one device (the step's semantics; sharding is tested elsewhere)."""
  config = medq_uni.get_config(f"size=tiny,stage={stage}")
  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, stage)
  model, vae = state_lib.build_models(config.model)
  model_key, vae_key = jax.random.split(jax.random.key(0))
  image = jnp.zeros((1, spec.vae_image_size, spec.vae_image_size, 3), jnp.float32)
  setup = state_lib.TrainSetup(
    spec=spec,
    model=model,
    vae=vae,
    mesh=None,
    params=nn.unbox(jax.jit(model.init)(model_key, init_batch(config.model))["params"]),
    vae_params=nn.unbox(jax.jit(vae.init)(vae_key, image)["params"]),
    param_shardings=None,
    vae_shardings=None,
    optimizer=state_lib.make_optimizer(config.train),
  )
  rng = np.random.default_rng(0)
  rows = [
    layout_lib.pack_example(
      dict(
        id=f"ex{i}",
        low=rng.random((40, 40)).astype(np.float32),
        high=rng.random((40, 40)).astype(np.float32),
        instruction="restore",
        description="mild noise",
      ),
      _CharTokenizer(),
      setup.spec,
      SPECIAL,
    )
    for i in range(2)
  ]
  return config, setup, layout_lib.collate(rows)


def _count(jaxpr, primitive: str) -> int:
  """Equations of `primitive` in a jaxpr and every sub-jaxpr (scan, cond, pjit, custom_vjp)."""
  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name == primitive
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else (param,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          count += _count(inner, primitive)
  return count


@pytest.fixture(scope="module")
def stage1():
  return _setup(1)


def test_stage1_steps_leave_und_parameters_bit_identical(stage1):
  config, setup, batch = stage1
  initial = {k: np.array(v) for k, v in flatten(setup.params).items()}
  state = state_lib.create_train_state(setup.params, setup.optimizer)
  step = jax.jit(
    step_lib.make_train_step(setup.model, setup.vae, setup.optimizer, config.model, config.train)
  )
  for _ in range(3):
    state, metrics = step(state, setup.vae_params, batch, jax.random.key(1))
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  final = {k: np.array(v) for k, v in flatten(state.params).items()}
  trains = lambda name: state_lib.is_trainable(name, 1, config.train.stage1_trainable)
  frozen = [k for k in initial if not trains(k)]
  trained = [k for k in initial if trains(k)]
  assert any("vit/" in k for k in frozen) and any("_moe_gen" in k for k in trained)
  for key in frozen:
    assert np.array_equal(final[key], initial[key]), key  # bit-identical
  for key in trained:
    assert not np.array_equal(final[key], initial[key]), key
  # the optimizer holds moments for the trainable parameters only
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  (adam,) = [s for s in jax.tree_util.tree_leaves(state.opt_state, is_leaf=is_adam) if is_adam(s)]
  assert set(flatten(adam.mu)) == set(trained)


def test_grad_fn_forms_no_gradient_of_a_frozen_parameter(stage1):
  config, setup, batch = stage1
  loss_fn = step_lib.make_loss_fn(setup.model, setup.vae, config.model, config.train)
  grad_fn = step_lib.make_grad_fn(loss_fn, config.train)
  args = (setup.params, setup.vae_params, batch, jax.random.key(1))
  trainable, frozen = state_lib.split_params(setup.params, config.train)
  grads, metrics = jax.eval_shape(grad_fn, *args)
  assert set(flatten(grads)) == set(flatten(trainable))
  assert not set(flatten(grads)) & set(flatten(frozen))
  # The jaxpr's outputs: one per trainable leaf plus the metrics, none for the frozen ones.
  jaxpr = jax.make_jaxpr(grad_fn)(*args)
  num_metrics = len(jax.tree_util.tree_leaves(metrics))
  assert len(jaxpr.jaxpr.outvars) == len(jax.tree_util.tree_leaves(trainable)) + num_metrics
  # Fewer matmuls than the full gradient: the weight gradients of the frozen ViT, attention,
  # und FFN and LM head are never formed (counted in the jaxprs, scan bodies included).
  full = jax.make_jaxpr(lambda *a: jax.grad(loss_fn, has_aux=True)(*a))(*args)
  scoped_dots, full_dots = _count(jaxpr.jaxpr, "dot_general"), _count(full.jaxpr, "dot_general")
  assert scoped_dots < full_dots, (scoped_dots, full_dots)


def test_stage2_trains_every_parameter():
  config = medq_uni.get_config("size=tiny,stage=2")
  params = {"decoder": {"mlp": {"kernel": 1}, "mlp_moe_gen": {"kernel": 2}}, "vit": {"w": 3}}
  trainable, frozen = state_lib.split_params(params, config.train)
  assert trainable == params and frozen == {}
  config.train.stage = 1
  trainable, frozen = state_lib.split_params(params, config.train)
  assert trainable == {"decoder": {"mlp_moe_gen": {"kernel": 2}}}
  assert state_lib.merge_params(trainable, frozen) == params
  assert state_lib.split_params(trainable, config.train) == (trainable, {})  # idempotent


def test_pixel_loss_keeps_its_gradient_outside_the_image_range():
  rng = np.random.default_rng(0)
  target = jnp.asarray(rng.uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
  decoded = jnp.asarray(1.6 + 0.2 * rng.random((2, 16, 16, 3)), jnp.float32)  # grey > 1
  weight = jnp.ones((2,), jnp.float32)
  loss = lambda d: sum(step_lib.pixel_loss_terms(d, target, weight))
  grad = np.asarray(jax.grad(loss)(decoded))
  assert np.abs(grad).min() > 0
  l1, _ = step_lib.pixel_loss_terms(decoded, target, weight)
  grey = lambda x: (np.asarray(x).mean(-1) + 1) / 2
  np.testing.assert_allclose(
    float(l1), np.mean(np.abs(grey(decoded) - np.clip(grey(target), 0, 1))), rtol=1e-6
  )
  # What a clip would do: no gradient at all there.
  clipped = lambda d: jnp.mean(jnp.abs(jnp.clip(step_lib.to_grey01(d), 0, 1) - grey(target)))
  assert not np.asarray(jax.grad(clipped)(decoded)).any()


def test_training_encodes_a_posterior_sample(stage1):
  config, setup, batch = stage1
  losses = {}
  for sample in (True, False):
    train_config = config.train.copy_and_resolve_references()
    train_config.sample_vae_posterior = sample
    loss_fn = step_lib.make_loss_fn(setup.model, setup.vae, config.model, train_config)
    run = jax.jit(lambda p, v, b, r, fn=loss_fn: fn(p, v, b, r)[1]["loss_rf"])
    losses[sample] = [
      float(run(setup.params, setup.vae_params, batch, jax.random.key(1))) for _ in range(2)
    ]
  assert losses[True][0] == losses[True][1]  # seeded by the step rng
  assert losses[True][0] != losses[False][0]


def test_nonfinite_step_skips_its_update_bit_for_bit(stage1):
  """A batch with NaN pixels: the step reports nonfinite=1 and returns the state it was given
  (params and optimizer state bit-identical, the step counter advanced); a good batch after it
  updates as usual."""
  config, setup, batch = stage1
  step = jax.jit(
    step_lib.make_train_step(setup.model, setup.vae, setup.optimizer, config.model, config.train)
  )
  state, metrics = step(
    state_lib.create_train_state(setup.params, setup.optimizer),
    setup.vae_params,
    batch,
    jax.random.key(1),
  )
  assert float(metrics["nonfinite"]) == 0
  before = jax.device_get(state)
  bad = dict(batch, vae_images=np.full_like(batch["vae_images"], np.nan))
  after, metrics = step(state, setup.vae_params, bad, jax.random.key(1))
  assert not np.isfinite(float(metrics["loss"])) and float(metrics["nonfinite"]) == 1
  after = jax.device_get(after)
  assert int(after.step) == int(before.step) + 1
  for name, tree in (("params", "params"), ("opt_state", "opt_state")):
    old = jax.tree_util.tree_leaves(getattr(before, tree))
    new = jax.tree_util.tree_leaves(getattr(after, tree))
    assert len(old) == len(new) > 0
    assert all(np.array_equal(a, b) for a, b in zip(old, new)), name
  good, metrics = step(jax.device_put(after), setup.vae_params, batch, jax.random.key(1))
  assert float(metrics["nonfinite"]) == 0
  assert not all(
    np.array_equal(a, b)
    for a, b in zip(
      jax.tree_util.tree_leaves(before.params), jax.tree_util.tree_leaves(good.params)
    )
  )


def test_all_finite():
  ok = {"a": jnp.ones((3,)), "b": (jnp.zeros(()), jnp.arange(3))}
  assert bool(step_lib.all_finite(ok))
  for bad in (jnp.nan, jnp.inf, -jnp.inf):
    assert not bool(step_lib.all_finite(ok, {"c": jnp.asarray([1.0, bad])}))


def test_ema_follows_the_parameters_and_evaluation_restores_it(stage1, tmp_path):
  """train.ema_decay: after each step ema = d * ema + (1 - d) * params (trainable subtree;
  frozen parameters copied), checked against a NumPy recurrence over the steps' parameters;
  saved with the state, and the evaluation restore (prefer_ema) returns it."""
  import orbax.checkpoint as ocp

  from medq_jax import checkpoints
  from medq_jax.train import checkpoint as checkpoint_lib

  config, setup, batch = stage1
  train_config = config.train.copy_and_resolve_references()
  train_config.ema_decay = decay = 0.75
  step = jax.jit(
    step_lib.make_train_step(setup.model, setup.vae, setup.optimizer, config.model, train_config)
  )
  state = state_lib.create_train_state(setup.params, setup.optimizer, decay)
  expected = {k: np.array(v) for k, v in flatten(setup.params).items()}
  for _ in range(3):
    state, _ = step(state, setup.vae_params, batch, jax.random.key(1))
    for key, value in flatten(jax.device_get(state.params)).items():
      expected[key] = decay * expected[key] + (1 - decay) * np.asarray(value)
  ema, params = flatten(jax.device_get(state.ema)), flatten(jax.device_get(state.params))
  trains = lambda name: state_lib.is_trainable(name, 1, config.train.stage1_trainable)
  for key in ema:
    if trains(key):
      np.testing.assert_allclose(ema[key], expected[key], rtol=1e-5, atol=1e-7, err_msg=key)
    else:
      assert np.array_equal(ema[key], params[key]), key
  assert any(trains(k) and not np.array_equal(ema[k], params[k]) for k in ema)

  manager = checkpoint_lib.make_manager(checkpoints.checkpoint_dir(str(tmp_path)))
  checkpoints.write_checksums(str(manager.directory), 3, state)
  manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)
  manager.wait_until_finished()
  manager.close()
  restored, _ = checkpoints.restore_params(str(tmp_path), config.model, prefer_ema=True)
  assert all(np.array_equal(v, ema[k]) for k, v in flatten(jax.device_get(restored)).items())
  restored, _ = checkpoints.restore_params(str(tmp_path), config.model)
  assert all(np.array_equal(v, params[k]) for k, v in flatten(jax.device_get(restored)).items())
