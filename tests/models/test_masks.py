"""BAGEL attention-mask semantics from per-token ids: a table of hand-written cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medq_jax.models.attention import TokenIds, allowed_mask, xla_attention
from medq_jax.types import PAD_SAMPLE
from medq_jax.types import SPLIT_CAUSAL as C
from medq_jax.types import SPLIT_FULL as F
from medq_jax.types import SPLIT_NOISE as N


def _ids(sample, split, mode, order):
  return TokenIds(*(np.asarray([x], np.int32) for x in (sample, split, mode, order)))


CASES = {
  "causal text": (
    dict(sample=[0, 0, 0], split=[0, 0, 0], mode=[C, C, C], order=[0, 1, 2]),
    ["100", "110", "111"],
  ),
  "text then full image": (
    dict(
      sample=[0, 0, 0, 0, 0], split=[0, 0, 1, 1, 1], mode=[C, C, F, F, F], order=[0, 1, 2, 2, 2]
    ),
    ["10000", "11000", "11111", "11111", "11111"],
  ),
  "full image then text": (
    dict(sample=[0, 0, 0, 0], split=[0, 0, 1, 1], mode=[F, F, C, C], order=[0, 0, 1, 2]),
    ["1100", "1100", "1110", "1111"],
  ),
  "noise split is invisible from outside": (
    dict(
      sample=[0, 0, 0, 0, 0], split=[0, 1, 1, 2, 2], mode=[C, N, N, C, C], order=[0, 1, 1, 2, 3]
    ),
    ["10000", "11100", "11100", "10010", "10011"],
  ),
  "packing: two samples never see each other": (
    dict(sample=[0, 0, 1, 1], split=[0, 0, 0, 0], mode=[C, C, C, C], order=[0, 1, 0, 1]),
    ["1000", "1100", "0010", "0011"],
  ),
  "padding is isolated": (
    dict(
      sample=[0, 0, PAD_SAMPLE, PAD_SAMPLE],
      split=[0, 0, 0, 0],
      mode=[C, C, C, C],
      order=[0, 1, 0, 0],
    ),
    ["1000", "1100", "0011", "0011"],
  ),
  "clean condition, description, noised target": (
    dict(
      sample=[0] * 6, split=[0, 1, 1, 2, 3, 3], mode=[C, F, F, C, N, N], order=[0, 1, 1, 2, 3, 3]
    ),
    ["100000", "111000", "111000", "111100", "111111", "111111"],
  ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_mask_table(name):
  ids, rows = CASES[name]
  expected = np.array([[c == "1" for c in row] for row in rows])
  tokens = _ids(**ids)
  np.testing.assert_array_equal(np.asarray(allowed_mask(tokens, tokens))[0], expected)


def test_masked_keys_do_not_influence_attention():
  """xla_attention with a mask equals attention computed on the allowed keys only."""
  rng = np.random.default_rng(0)
  q = rng.normal(size=(1, 5, 4, 8)).astype(np.float32)
  k = rng.normal(size=(1, 5, 2, 8)).astype(np.float32)
  v = rng.normal(size=(1, 5, 2, 8)).astype(np.float32)
  ids, _ = CASES["noise split is invisible from outside"]
  tokens = _ids(**ids)
  mask = np.asarray(allowed_mask(tokens, tokens))
  out = np.asarray(xla_attention(q, k, v, mask))
  for i in range(5):
    keys = np.flatnonzero(mask[0, i])
    for h in range(4):
      kv = h // 2
      logits = q[0, i, h] @ k[0, keys, kv].T / np.sqrt(8)
      weights = np.exp(logits - logits.max())
      weights /= weights.sum()
      np.testing.assert_allclose(out[0, i, h], weights @ v[0, keys, kv], atol=1e-5)


def _numpy_attention(q, k, v, mask):
  """Per (row, query, head) softmax over the allowed keys only; zeros where none is allowed."""
  batch, q_len, heads, dim = q.shape
  groups = heads // k.shape[2]
  out = np.zeros_like(q)
  for b in range(batch):
    for i in range(q_len):
      keys = np.flatnonzero(mask[b, i])
      if not keys.size:
        continue
      for h in range(heads):
        logits = q[b, i, h] @ k[b, keys, h // groups].T / np.sqrt(dim)
        weights = np.exp(logits - logits.max())
        out[b, i, h] = (weights / weights.sum()) @ v[b, keys, h // groups]
  return out


@pytest.mark.parametrize("q_len,k_len,heads,kv_heads", [(6, 6, 4, 2), (3, 9, 6, 2), (1, 7, 4, 4)])
def test_xla_attention_equals_numpy_with_empty_rows(q_len, k_len, heads, kv_heads):
  """Random masks over queries and keys of other lengths (a KV cache's prefill and decode), GQA
  groups folded into the matmul; a query with no allowed key gives zeros, and its gradient is
  finite."""
  rng = np.random.default_rng(q_len * 100 + k_len)
  q = rng.normal(size=(2, q_len, heads, 8)).astype(np.float32)
  k = rng.normal(size=(2, k_len, kv_heads, 8)).astype(np.float32)
  v = rng.normal(size=(2, k_len, kv_heads, 8)).astype(np.float32)
  mask = rng.random((2, q_len, k_len)) < 0.5
  mask[1, 0] = False  # an empty row
  out = np.asarray(xla_attention(q, k, v, mask))
  np.testing.assert_allclose(out, _numpy_attention(q, k, v, mask), atol=1e-5)
  assert not out[1, 0].any()
  grads = jax.grad(lambda q, k, v: jnp.sum(xla_attention(q, k, v, mask) ** 2), (0, 1, 2))(q, k, v)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)
  assert not np.asarray(grads[0])[1, 0].any()
