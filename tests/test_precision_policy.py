"""train.precision: bf16 compute over fp32 master weights. With bf16 the train step's parameters,
AdamW moments and EMA stay float32, every matmul of the model (forward and backward) takes bf16
operands while the frozen VAE's stay float32, the loss is float32 and within a stated tolerance
of the fp32 loss; a policy that contradicts model.dtype / model.param_dtype is one config error."""

import sys
from collections import Counter
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import packing_testlib as lib

from medq_jax import layout as layout_lib
from medq_jax.models.medq_uni import init_batch
from medq_jax.train import config_checks, precision
from medq_jax.train import state as state_lib
from medq_jax.train import step as step_lib

# Measured on the tiny config (perturbed init, 2 rows, stage 2, this test's draws): |bf16 - fp32|
# / fp32 = 3.0e-5 for the loss, 1.5e-5 for L_rf, 1.3e-4 for the CE; the bound leaves 15x room.
LOSS_RTOL = 2e-3


def _config(policy):
  config = lib.config(2)
  config.train.precision = policy
  config.train.ema_decay = 0.9
  return config


def _dots(jaxpr):
  """(operand dtypes, name stack) of every dot_general, scan/pjit/custom_vjp bodies included."""
  return [
    (tuple(str(v.aval.dtype) for v in eqn.invars), where)
    for eqn, where in lib.jaxpr_equations(jaxpr)
    if eqn.primitive.name == "dot_general"
  ]


def _abstract_step(policy):
  """(model config, jaxpr of the train step, its abstract output) without compiling."""
  config = _config(policy)
  model_config = precision.model_config(config)
  model, vae = state_lib.build_models(model_config)
  params = jax.eval_shape(
    lambda k: nn.unbox(model.init(k, init_batch(model_config))["params"]), jax.random.key(0)
  )
  size = lib.spec(2).vae_image_size
  image = jnp.zeros((1, size, size, 3))
  vae_params = jax.eval_shape(lambda k: nn.unbox(vae.init(k, image)["params"]), jax.random.key(0))
  optimizer = state_lib.make_optimizer(config.train)
  state = jax.eval_shape(lambda p: state_lib.create_train_state(p, optimizer, 0.9), params)
  step = step_lib.make_train_step(model, vae, optimizer, model_config, config.train)
  batch = layout_lib.collate(lib.single_rows(2, 2))
  args = (state, vae_params, batch, jax.random.key(0))
  return model_config, jax.make_jaxpr(step)(*args), jax.eval_shape(step, *args)


@pytest.mark.parametrize("policy", ["fp32", "bf16"])
def test_master_weights_and_optimizer_state_stay_fp32(policy):
  model_config, _, (state, metrics) = _abstract_step(policy)
  assert model_config.dtype == precision.POLICIES[policy]
  assert model_config.param_dtype == "float32"
  for part in (state.params, state.opt_state, state.ema):
    floats = [x.dtype for x in jax.tree_util.tree_leaves(part) if x.dtype != jnp.int32]
    assert floats and set(floats) == {jnp.dtype(jnp.float32)}
  assert metrics["loss"].dtype == jnp.float32


def test_bf16_matmuls_of_the_model_fp32_of_the_vae():
  _, jaxpr, _ = _abstract_step("bf16")
  dots = _dots(jaxpr.jaxpr)
  model = [(dtypes, where) for dtypes, where in dots if "MedQUni" in where]
  vae = [(dtypes, where) for dtypes, where in dots if "FluxAutoEncoder" in where]
  # SSIM's Gaussian filter is two banded matmuls per image (metrics.image_quality._filter)
  ssim = [
    (dtypes, where) for dtypes, where in dots if "nhw,wv->nhv" in where or "nhv,hu->nuv" in where
  ]
  assert len(model) + len(vae) + len(ssim) == len(dots)  # every matmul is one of these
  assert ssim and all(dtypes == ("float32", "float32") for dtypes, _ in ssim)
  assert all("bfloat16" in dtypes for dtypes, _ in model), [m for m in model if "bf" not in m[0]]
  kinds = Counter(dtypes for dtypes, _ in model)
  # forward and backward projections bf16 x bf16; mixed only where attention accumulates in fp32
  assert kinds[("bfloat16", "bfloat16")] >= 0.8 * len(model), kinds
  assert any("transpose" in where for _, where in model)  # the backward pass is there too
  assert vae and all(dtypes == ("float32", "float32") for dtypes, _ in vae)
  _, jaxpr32, _ = _abstract_step("fp32")
  dots32 = _dots(jaxpr32.jaxpr)
  assert len(dots32) == len(dots)
  assert all(dtypes == ("float32", "float32") for dtypes, _ in dots32)


def test_bf16_loss_is_close_to_fp32():
  """The same fp32 parameters, batch and draws through both policies' models."""
  config = _config("fp32")
  batch = layout_lib.collate(lib.single_rows(2, 2))
  losses, params = {}, None
  for policy in ("fp32", "bf16"):
    config.train.precision = policy
    model_config = precision.model_config(config)
    model, vae = state_lib.build_models(model_config)
    if params is None:
      model_key, vae_key, noise_key = jax.random.split(jax.random.key(0), 3)
      params = nn.unbox(jax.jit(model.init)(model_key, init_batch(model_config))["params"])
      params = lib.perturbed(params, noise_key)
      size = lib.spec(2).vae_image_size
      vae_params = nn.unbox(jax.jit(vae.init)(vae_key, jnp.zeros((1, size, size, 3)))["params"])
    loss_fn = step_lib.make_loss_fn(model, vae, model_config, config.train)
    loss, metrics = jax.jit(loss_fn)(params, vae_params, batch, jax.random.key(4))
    assert loss.dtype == jnp.float32
    losses[policy] = jax.device_get(metrics)
  for name in ("loss", "loss_rf", "loss_ce"):
    fp32, bf16 = float(losses["fp32"][name]), float(losses["bf16"][name])
    assert np.isfinite(bf16) and abs(bf16 - fp32) <= LOSS_RTOL * abs(fp32), (name, fp32, bf16)
  assert float(losses["bf16"]["loss"]) != float(losses["fp32"]["loss"])  # bf16 really ran


@pytest.mark.parametrize(
  "field, value, policy, fragment",
  [
    ("dtype", "bfloat16", "fp32", "model.dtype='bfloat16' conflicts with train.precision='fp32'"),
    ("param_dtype", "bfloat16", "bf16", "keeps float32 master weights"),
    ("dtype", "float32", "fp16", "train.precision='fp16': expected one of"),
  ],
)
def test_a_contradicting_config_is_one_error(field, value, policy, fragment):
  config = _config(policy)
  config.model[field] = value
  with pytest.raises(config_checks.ConfigError, match=fragment) as error:
    config_checks.check_precision_and_freeze(config)
  assert "\n" not in str(error.value)
  with pytest.raises(config_checks.ConfigError, match=fragment):
    state_lib.build_setup(config, jax.random.key(0))  # before anything is initialised


def test_no_policy_keeps_model_dtypes_and_bf16_over_float32_is_the_bf16_policy():
  config = _config("")
  config.model.dtype = "bfloat16"
  assert precision.model_config(config) is config.model  # as before the policy existed
  config.train.precision = "bf16"
  config_checks.check_precision_and_freeze(config)  # model.dtype already what the policy says
  assert precision.model_config(config).dtype == "bfloat16"
