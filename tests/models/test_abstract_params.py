"""`medq_uni.abstract_params` is traced once per model config and equals a fresh trace of the
model's init; a changed config is a new trace, and callers cannot alter what later calls get."""

import importlib

import jax
from flax import linen as nn

from medq_jax.models import medq_uni


def _config():
  return importlib.import_module("configs.medq_uni").get_config("size=tiny,stage=2").model


def _shapes(tree):
  return jax.tree_util.tree_map(lambda leaf: (leaf.shape, leaf.dtype), nn.unbox(tree))


def _fresh_trace(model_config):
  model = medq_uni.MedQUni(model_config)
  init = lambda rng: model.init(rng, medq_uni.init_batch(model_config))["params"]
  return jax.eval_shape(init, jax.random.key(0))


def test_traced_once_per_config_and_equal_to_a_fresh_trace(monkeypatch):
  monkeypatch.setattr(medq_uni, "_ABSTRACT_PARAMS", {})
  traces = []
  real_init_batch = medq_uni.init_batch  # built once per trace of the model's init
  monkeypatch.setattr(medq_uni, "init_batch", lambda c: traces.append(1) or real_init_batch(c))
  config = _config()
  first = medq_uni.abstract_params(config)
  second = medq_uni.abstract_params(_config())  # an equal config, another object
  assert len(traces) == 1
  monkeypatch.setattr(medq_uni, "init_batch", real_init_batch)
  assert _shapes(first) == _shapes(second) == _shapes(_fresh_trace(config))

  first["decoder"] = None  # a caller editing its tree changes nothing for the next caller
  assert _shapes(medq_uni.abstract_params(config)) == _shapes(second)


def test_a_changed_field_is_a_new_trace(monkeypatch):
  monkeypatch.setattr(medq_uni, "_ABSTRACT_PARAMS", {})
  config = _config()
  before = _shapes(medq_uni.abstract_params(config))
  config.llm.intermediate_size *= 2
  after = _shapes(medq_uni.abstract_params(config))
  assert after != before
  assert after == _shapes(_fresh_trace(config))
