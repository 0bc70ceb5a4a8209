"""`layers.rows_dot_general`, the matmul of every dense layer: [..., D] x [D, F] as one
[rows, D] x [D, F] product. Its output and gradients equal NumPy's, other dimension numbers go to
`lax.dot_general` unchanged, and the SwiGLU MLP's compiled backward has rank-2 dots only."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from medq_jax.models.decoder import ExpertMLP
from medq_jax.models.layers import rows_dot_general

DENSE = (((2,), (0,)), ((), ()))


@pytest.fixture(scope="module")
def operands():
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (3, 7, 48), jnp.float32)
  w = jax.random.normal(keys[1], (48, 80), jnp.float32)
  g = jax.random.normal(keys[2], (3, 7, 80), jnp.float32)
  return x, w, g


def test_output_and_gradients_equal_numpy(operands):
  x, w, g = operands
  out, vjp = jax.vjp(lambda a, b: rows_dot_general(a, b, DENSE), x, w)
  xn, wn, gn = (np.asarray(a, np.float64) for a in (x, w, g))
  np.testing.assert_allclose(out, xn @ wn, rtol=1e-5, atol=1e-5)
  dx, dw = vjp(g)
  np.testing.assert_allclose(dx, gn @ wn.T, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dw, xn.reshape(-1, 48).T @ gn.reshape(-1, 80), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
  "shapes, dims",
  [
    (((4, 5), (5, 6)), (((1,), (0,)), ((), ()))),  # already rank 2
    (((2, 4, 5), (2, 5, 6)), (((2,), (1,)), ((0,), (0,)))),  # batched
    (((4, 5, 3), (5, 6)), (((1,), (0,)), ((), ()))),  # contracts a middle axis
  ],
)
def test_other_dimension_numbers_are_lax_dot_general(shapes, dims):
  a, b = (
    np.random.default_rng(i).standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)
  )
  np.testing.assert_array_equal(rows_dot_general(a, b, dims), jax.lax.dot_general(a, b, dims))


def test_preferred_element_type_and_bf16(operands):
  x, w, _ = operands
  out = rows_dot_general(
    x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), DENSE, preferred_element_type=jnp.float32
  )
  assert out.dtype == jnp.float32 and out.shape == (3, 7, 80)
  np.testing.assert_allclose(out, np.asarray(x) @ np.asarray(w), rtol=0.05, atol=0.3)


def _mlp(dtype=jnp.float32) -> ExpertMLP:
  config = ml_collections.ConfigDict(dict(hidden_size=48, intermediate_size=80))
  return ExpertMLP(config, dtype, jnp.float32)


def _numpy_swiglu(x, params):
  x = x.astype(np.float64)
  kernel = lambda name: np.asarray(params[name]["kernel"], np.float64)
  gate, up = x @ kernel("gate_proj"), x @ kernel("up_proj")
  return (gate / (1.0 + np.exp(-gate)) * up) @ kernel("down_proj")


def test_swiglu_mlp_equals_numpy_and_its_backward_has_only_rank_2_dots(operands):
  x, _, _ = operands
  mlp = _mlp()
  params = nn.unbox(mlp.init(jax.random.key(1), x))["params"]
  assert sorted(params) == ["down_proj", "gate_proj", "up_proj"]
  out = mlp.apply({"params": params}, x)
  np.testing.assert_allclose(out, _numpy_swiglu(np.asarray(x), params), rtol=1e-5, atol=1e-6)
  bf16 = _mlp(jnp.bfloat16).apply({"params": params}, x)
  assert bf16.dtype == jnp.bfloat16
  np.testing.assert_allclose(
    np.asarray(bf16, np.float32), _numpy_swiglu(np.asarray(x), params), rtol=0.05, atol=0.02
  )
  loss = lambda p, inputs: jnp.sum(jnp.sin(mlp.apply({"params": p}, inputs)))
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).as_text()
  dots = re.findall(
    r"stablehlo\.dot_general %\S+, %\S+, (.*?) : \((tensor<[^>]*>), (tensor<[^>]*>)", hlo
  )
  assert len(dots) == 9, hlo  # 3 forward; 3 weight and 3 input gradients
  for _, lhs, rhs in dots:
    assert lhs.count("x") == 2 and rhs.count("x") == 2, (lhs, rhs)
