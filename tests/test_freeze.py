"""train.freeze: named groups and regexes frozen on top of the stage's rule get no gradient at all
(the gradient pytree lacks them; the backward pass forms no weight gradient for them: the frozen
ViT's backward is gone, a frozen projection keeps only its input gradient, the frozen embedding
has no scatter-add), stay bit-identical over real steps and hold no optimizer state; an entry
that matches nothing, does not compile or leaves nothing to train is one config error."""

import re
import sys
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import packing_testlib as lib

from medq_jax import layout as layout_lib
from medq_jax.convert.core import flatten
from medq_jax.models.medq_uni import abstract_params
from medq_jax.train import config_checks, freeze
from medq_jax.train import state as state_lib
from medq_jax.train import step as step_lib

FREEZE = ("vit", "embeddings", r"decoder/layers/mlp/")  # two groups and a regex (und FFN)


def frozen_by_hand(name: str) -> bool:
  """The oracle: what FREEZE means, spelled out by path."""
  return name.startswith(("vit/", "embed_tokens/")) or "decoder/layers/mlp/" in name


def _config(entries=FREEZE, stage=2):
  config = lib.config(stage)
  config.train.freeze = entries
  return config


@pytest.fixture(scope="module")
def setup():
  config = _config()
  model, vae, params, vae_params = lib.perturbed_models(config)
  batch = layout_lib.collate(lib.single_rows(2, 2))
  return config, model, vae, params, vae_params, batch


def _backward(config, setup):
  """The grad function's output structure and its backward-pass equations."""
  _, model, vae, params, vae_params, batch = setup
  loss_fn = step_lib.make_loss_fn(model, vae, config.model, config.train)
  grad_fn = step_lib.make_grad_fn(loss_fn, config.train)
  args = (params, vae_params, batch, jax.random.key(1))
  grads, _ = jax.eval_shape(grad_fn, *args)
  eqns = [
    (eqn.primitive.name, where)
    for eqn, where in lib.jaxpr_equations(jax.make_jaxpr(grad_fn)(*args).jaxpr)
  ]
  return flatten(grads), [(p, w) for p, w in eqns if w.startswith("transpose")]


def test_frozen_parameters_get_no_gradient(setup):
  config = setup[0]
  names = list(flatten(setup[3]))
  trainable, frozen = state_lib.split_params(setup[3], config.train)
  assert set(flatten(frozen)) == {n for n in names if frozen_by_hand(n)}
  assert set(flatten(trainable)) == {n for n in names if not frozen_by_hand(n)}
  grads, backward = _backward(config, setup)
  assert set(grads) == set(flatten(trainable))  # no gradient leaf for a frozen parameter
  plain_grads, plain_backward = _backward(_config(()), setup)
  assert set(plain_grads) == set(names)

  def dots(eqns, pattern):
    return sum(p == "dot_general" and re.search(pattern, w) is not None for p, w in eqns)

  # The ViT's whole backward pass is gone (its input, the image patches, needs no gradient).
  assert dots(plain_backward, r"/vit/") > 0 and dots(backward, r"/vit/") == 0
  # A frozen und FFN projection keeps its input gradient (2 layers) and loses its weight one.
  for proj in ("up_proj", "gate_proj", "down_proj"):
    assert dots(plain_backward, rf"layers/mlp/{proj}") == 2 * dots(backward, rf"layers/mlp/{proj}")
    assert dots(backward, rf"layers/mlp_moe_gen/{proj}") == dots(
      plain_backward, rf"layers/mlp_moe_gen/{proj}"
    )
  # The embedding's gradient (a scatter-add into the table) is not formed.
  scatter = lambda eqns: [w for p, w in eqns if p.startswith("scatter") and "embed_tokens" in w]
  assert scatter(plain_backward) and not scatter(backward)


def test_frozen_parameters_stay_bit_identical_over_steps(setup):
  config, model, vae, params, vae_params, batch = setup
  optimizer = state_lib.make_optimizer(config.train)
  step = jax.jit(step_lib.make_train_step(model, vae, optimizer, config.model, config.train))
  state = state_lib.create_train_state(params, optimizer)
  for _ in range(2):  # the schedule's learning rate is 0 at step 0
    state, metrics = step(state, vae_params, batch, jax.random.key(1))
    assert float(metrics["nonfinite"]) == 0
  before, after = flatten(jax.device_get(params)), flatten(jax.device_get(state.params))
  for name, value in before.items():
    if frozen_by_hand(name):
      assert np.array_equal(after[name], value), name
    else:
      assert not np.array_equal(after[name], value), name
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  (adam,) = [s for s in jax.tree_util.tree_leaves(state.opt_state, is_leaf=is_adam) if is_adam(s)]
  assert set(flatten(adam.mu)) == {n for n in before if not frozen_by_hand(n)}


def test_freeze_combines_with_the_stage_rule():
  params = nn.unbox(abstract_params(lib.config(1).model))
  names = list(flatten(params))
  config = _config(("vae2llm", "vae"), stage=1)  # "vae" is outside the tree: accepted, no-op
  trainable, frozen = state_lib.split_params(params, config.train)
  gen = re.compile(config.train.stage1_trainable)
  expected = {n for n in names if gen.search(n) and not n.startswith("vae2llm/")}
  assert set(flatten(trainable)) == expected and expected
  assert set(flatten(frozen)) == set(names) - expected
  state_lib.check_freeze(params, config.train)
  # "und" in stage 2 is what stage 1 freezes; "gen" its complement
  config = _config(("und",), stage=2)
  assert set(flatten(state_lib.split_params(params, config.train)[0])) == {
    n for n in names if gen.search(n)
  }
  config = _config(("gen", "lm_head"), stage=2)
  assert freeze.entries(ml_collections.ConfigDict({"freeze": "gen, lm_head"})) == (
    "gen",
    "lm_head",
  )  # a comma-separated string (a config built in code) means the same
  assert set(flatten(state_lib.split_params(params, config.train)[0])) == {
    n for n in names if not gen.search(n) and not n.startswith("lm_head/")
  }


@pytest.mark.parametrize(
  "entries, stage, fragment",
  [
    (("vit", "decoder/nothing_here"), 2, "'decoder/nothing_here' matches no parameter"),
    (("mlp_moe_gen(",), 2, "is not a valid regex"),
    (("und", "gen"), 2, "leaves no parameter to train"),
    (("gen",), 1, "leaves no parameter to train"),
  ],
)
def test_a_bad_entry_is_one_config_error(entries, stage, fragment):
  config = _config(entries, stage)
  with pytest.raises(config_checks.ConfigError, match=re.escape(fragment)) as error:
    config_checks.check_precision_and_freeze(config)
  assert "\n" not in str(error.value)
  params = nn.unbox(abstract_params(config.model))
  with pytest.raises(config_checks.ConfigError, match=re.escape(fragment)):
    state_lib.check_freeze(params, config.train)
