"""`layers.apply_rope` and its hand-written backward against transformers' Qwen2 RoPE, run by
torch autograd."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

from medq_jax.models import layers


def _case(seed: int = 0):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(2, 7, 4, 16)).astype(np.float32)  # [B, L, heads, head_dim]
  k = rng.normal(size=(2, 7, 2, 16)).astype(np.float32)
  positions = rng.integers(0, 500, (2, 7))
  cos, sin = layers.rope_tables(jnp.asarray(positions), 16, 10000.0)
  return q, k, np.asarray(cos), np.asarray(sin)


def test_rope_forward_and_backward_match_transformers():
  q, k, cos, sin = _case()
  rng = np.random.default_rng(1)
  wq, wk = rng.normal(size=q.shape).astype(np.float32), rng.normal(size=k.shape).astype(np.float32)

  def loss(q, k):
    return jnp.sum(wq * layers.apply_rope(q, cos, sin)) + jnp.sum(
      jnp.sin(layers.apply_rope(k, cos, sin)) * wk
    )

  out_q, out_k = layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin)
  grad_q, grad_k = jax.grad(loss, argnums=(0, 1))(q, k)

  # transformers wants [B, heads, L, head_dim]
  tq = torch.tensor(q.transpose(0, 2, 1, 3), requires_grad=True)
  tk = torch.tensor(k.transpose(0, 2, 1, 3), requires_grad=True)
  rq, rk = apply_rotary_pos_emb(tq, tk, torch.tensor(cos), torch.tensor(sin))
  expected = torch.sum(torch.tensor(wq.transpose(0, 2, 1, 3)) * rq) + torch.sum(
    torch.sin(rk) * torch.tensor(wk.transpose(0, 2, 1, 3))
  )
  expected.backward()
  np.testing.assert_allclose(out_q, rq.detach().numpy().transpose(0, 2, 1, 3), atol=1e-6)
  np.testing.assert_allclose(out_k, rk.detach().numpy().transpose(0, 2, 1, 3), atol=1e-6)
  np.testing.assert_allclose(grad_q, tq.grad.numpy().transpose(0, 2, 1, 3), atol=1e-5)
  np.testing.assert_allclose(grad_k, tk.grad.numpy().transpose(0, 2, 1, 3), atol=1e-5)


def test_rope_backward_under_remat_and_bf16():
  """The custom backward inside jax.checkpoint equals it outside; bf16 inputs get bf16
  gradients computed in float32."""
  q, _, cos, sin = _case(2)
  plain = jax.grad(lambda x: jnp.sum(jnp.tanh(layers.apply_rope(x, cos, sin))))
  remat = jax.grad(jax.checkpoint(lambda x: jnp.sum(jnp.tanh(layers.apply_rope(x, cos, sin)))))
  np.testing.assert_array_equal(np.asarray(plain(q)), np.asarray(remat(q)))
  q16 = jnp.asarray(q, jnp.bfloat16)
  grad16 = jax.grad(lambda x: jnp.sum(layers.apply_rope(x, cos, sin).astype(jnp.float32)))(q16)
  grad32 = jax.grad(lambda x: jnp.sum(layers.apply_rope(x, cos, sin)))(q)
  assert grad16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(grad16, np.float32), grad32, atol=2e-2)
