"""`model.fused_mlp`: the SwiGLU gate and up projections as one matmul over their stacked kernels.
The parameters (names, shapes, initial values) are those of two separate layers, the output is
NumPy's down(silu(x Wg) * (x Wu)), and the gradients equal the unfused layer's."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import model_sizes
from medq_jax.models.decoder import ExpertMLP


def _mlp(fused: bool, dtype=jnp.float32) -> ExpertMLP:
  config = ml_collections.ConfigDict(dict(hidden_size=48, intermediate_size=80))
  return ExpertMLP(config, dtype, jnp.float32, fused)


def _numpy_swiglu(x, params):
  x = x.astype(np.float64)
  gate = x @ np.asarray(params["gate_proj"]["kernel"], np.float64)
  up = x @ np.asarray(params["up_proj"]["kernel"], np.float64)
  silu = gate / (1.0 + np.exp(-gate))
  return (silu * up) @ np.asarray(params["down_proj"]["kernel"], np.float64)


@pytest.fixture(scope="module")
def inputs():
  x = jax.random.normal(jax.random.key(1), (3, 7, 48), jnp.float32)
  return x, nn.unbox(_mlp(False).init(jax.random.key(0), x))["params"]


def test_fused_parameters_are_the_two_layers(inputs):
  x, unfused = inputs
  fused = nn.unbox(_mlp(True).init(jax.random.key(0), x))["params"]
  assert jax.tree_util.tree_structure(fused) == jax.tree_util.tree_structure(unfused)
  for a, b in zip(jax.tree_util.tree_leaves(fused), jax.tree_util.tree_leaves(unfused)):
    np.testing.assert_array_equal(a, b)  # same names, so the same initial values
  assert fused["gate_proj"]["kernel"].shape == (48, 80)
  assert "bias" not in fused["gate_proj"]


def test_fused_output_equals_numpy_and_gradients_equal_unfused(inputs):
  x, params = inputs
  fused, unfused = _mlp(True), _mlp(False)
  out = fused.apply({"params": params}, x)
  np.testing.assert_allclose(out, _numpy_swiglu(np.asarray(x), params), rtol=1e-5, atol=1e-6)
  loss = lambda module: lambda p: jnp.sum(jnp.sin(module.apply({"params": p}, x)))
  grads = jax.grad(loss(fused))(params)
  want = jax.grad(loss(unfused))(params)
  for path, a in jax.tree_util.tree_leaves_with_path(grads):
    b = dict(jax.tree_util.tree_leaves_with_path(want))[path]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_fused_bf16_compute_is_close(inputs):
  x, params = inputs
  out = _mlp(True, jnp.bfloat16).apply({"params": params}, x)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(
    np.asarray(out, np.float32), _numpy_swiglu(np.asarray(x), params), rtol=0.05, atol=0.02
  )


def test_every_size_fuses_by_default():
  for size in ("tiny", "small", "base", "unimedvl_7b"):
    assert model_sizes.model_config(size).fused_mlp is True
