"""The chunked attention kernel (medq_jax/models/chunked_attention.py) against a NumPy softmax
over the allowed keys, its hand-written backward against autodiff of the reference
`xla_attention`, and the train step's loss and gradients with either kernel."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parent))

import packing_testlib as lib
from test_masks import _numpy_attention

from medq_jax import layout as layout_lib
from medq_jax.models import attention as attention_lib
from medq_jax.models.attention import xla_attention
from medq_jax.models.chunked_attention import chunked_attention
from medq_jax.train import step as step_lib


def _inputs(seed, q_len, k_len, heads, kv_heads, dim=8, batch=2):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(batch, q_len, heads, dim)).astype(np.float32)
  k = rng.normal(size=(batch, k_len, kv_heads, dim)).astype(np.float32)
  v = rng.normal(size=(batch, k_len, kv_heads, dim)).astype(np.float32)
  mask = rng.random((batch, q_len, k_len)) < 0.5
  mask[1, 0] = False  # an empty row
  mask[0, :, 0] = True  # and rows that all see key 0
  return q, k, v, mask


# (q_len, k_len, heads, kv_heads, chunk): a padded last chunk, several whole chunks, a chunk
# longer than the queries, Lq != Lk (a prefill against a longer cache), no GQA grouping.
SHAPES = [(6, 6, 4, 2, 4), (9, 9, 6, 2, 3), (5, 7, 4, 4, 8), (7, 12, 4, 1, 2)]


@pytest.mark.parametrize("q_len,k_len,heads,kv_heads,chunk", SHAPES)
def test_chunked_attention_equals_numpy(q_len, k_len, heads, kv_heads, chunk):
  q, k, v, mask = _inputs(q_len * 31 + k_len, q_len, k_len, heads, kv_heads)
  out = np.asarray(chunked_attention(q, k, v, mask, query_chunk=chunk))
  np.testing.assert_allclose(out, _numpy_attention(q, k, v, mask), atol=1e-5)
  assert not out[1, 0].any()


@pytest.mark.parametrize("q_len,k_len,heads,kv_heads,chunk", SHAPES)
def test_chunked_backward_equals_autodiff_of_the_reference(q_len, k_len, heads, kv_heads, chunk):
  """The custom VJP (probabilities recomputed per chunk, delta = rowsum(dO * O)) gives the
  gradients autodiff derives from `xla_attention`; an empty row's are zero and finite."""
  q, k, v, mask = _inputs(q_len * 7 + k_len, q_len, k_len, heads, kv_heads)
  weights = np.random.default_rng(1).normal(size=q.shape).astype(np.float32)

  def grads(fn):
    loss = lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v, mask)) * weights)
    return jax.grad(loss, (0, 1, 2))(q, k, v)

  ours = grads(lambda *a: chunked_attention(*a, query_chunk=chunk))
  for mine, ref in zip(ours, grads(xla_attention)):
    np.testing.assert_allclose(mine, ref, atol=2e-5, rtol=1e-4)
  assert np.isfinite(np.asarray(ours[0])).all() and not np.asarray(ours[0])[1, 0].any()


def test_without_a_mask_it_equals_dot_product_attention():
  """mask=None (the VAE's attention): every key, no select."""
  q, k, v, _ = _inputs(3, 10, 10, 1, 1, dim=16, batch=3)
  ours = lambda q, k, v: chunked_attention(q, k, v, None, query_chunk=4)
  np.testing.assert_allclose(ours(q, k, v), jax.nn.dot_product_attention(q, k, v), atol=1e-5)
  loss = lambda fn: lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))
  for mine, ref in zip(
    jax.grad(loss(ours), (0, 1, 2))(q, k, v),
    jax.grad(loss(jax.nn.dot_product_attention), (0, 1, 2))(q, k, v),
  ):
    np.testing.assert_allclose(mine, ref, atol=2e-5)


def test_bfloat16_inputs_keep_their_dtype_and_float32_softmax():
  q, k, v, mask = _inputs(5, 8, 8, 4, 2)
  out = chunked_attention(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)), mask, query_chunk=4)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(
    np.asarray(out, np.float32), _numpy_attention(q, k, v, mask), atol=3e-2
  )


def test_auto_picks_chunked_for_long_query_chunks_on_one_cpu_device(monkeypatch):
  """The suite's processes have 8 CPU devices (a mesh: the row loop would gather the batch)."""
  assert jax.default_backend() == "cpu"
  assert attention_lib.resolve_impl("auto", 4096) == (
    "xla" if jax.device_count() > 1 else "chunked"
  )
  monkeypatch.setattr(jax, "device_count", lambda: 1)
  assert attention_lib.resolve_impl("auto", attention_lib.CHUNKED_MIN_QUERIES) == "chunked"
  assert attention_lib.resolve_impl("auto", 1) == "xla"  # a decoding step
  assert attention_lib.resolve_impl("xla", 4096) == "xla"
  ids = attention_lib.TokenIds(*(jnp.zeros((1, 2), jnp.int32) for _ in range(4)))
  q = jnp.zeros((1, 2, 2, 4))
  with pytest.raises(ValueError, match="unknown implementation 'flash'.*chunked"):
    attention_lib.attention(q, q, q, ids, ids, impl="flash")


@pytest.fixture(scope="module")
def stage2_rows():
  return layout_lib.collate(lib.single_rows(2, 3, {1: ("vae_condition",)}))


def test_train_step_loss_and_gradients_equal_with_either_kernel(stage2_rows):
  """The tiny stage-2 loss (BAGEL masks with padding, dropped conditions, pixel losses) and its
  gradient with `model.attention_impl` chunked equal those with xla."""
  out = {}
  for impl in ("xla", "chunked"):
    cfg = lib.config(2)
    cfg.model.attention_impl = impl
    model, vae, params, vae_params = lib.perturbed_models(cfg)
    loss_fn = step_lib.make_loss_fn(model, vae, cfg.model, cfg.train)
    value_and_grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    out[impl] = value_and_grad(params, vae_params, stage2_rows, jax.random.key(3))
  (_, ref_metrics), ref_grads = out["xla"]
  (_, metrics), grads = out["chunked"]
  for key in ref_metrics:
    np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=2e-5, atol=1e-6, err_msg=key)
  for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


def test_chunks_are_straight_line_code_and_rows_a_loop():
  """Forward and backward loop over rows only: a row's chunks are unrolled (no per-chunk
  stacking buffers), so a 4-chunk attention compiles to one row loop in each direction."""
  q = jax.random.normal(jax.random.key(0), (3, 64, 4, 8))
  k = jax.random.normal(jax.random.key(1), (3, 64, 2, 8))
  mask = jnp.tril(jnp.ones((64, 64), bool))[None].repeat(3, 0)

  def loss(q, k):
    return jnp.sum(chunked_attention(q, k, k, mask, query_chunk=16) ** 2)

  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(q, k).compile().as_text()
  assert hlo.count(" while(") == 2  # the forward's row loop and the backward's
