"""`model.scan_unroll` and the two-stream decoder: same parameters and numbers, other code.

The unrolled stack must keep the rolled one's parameter tree (checkpoints move between the two)
and compute the same outputs and gradients; what differs is the compiled program (no while loop,
hence no zero-filled per-layer residual buffers). The decoder keeps und and gen as two streams,
so with expert_scope='all' no array of the joint stream's [B, Lu + Lg, D] shape is ever built.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import medq_uni
from medq_jax.models.attention import TokenIds
from medq_jax.models.decoder import MoTDecoder
from medq_jax.models.vit import SiglipVisionEncoder, image_to_patches

B, LU, LG = 2, 12, 8


def _ids(length, offset):
  order = jnp.broadcast_to(jnp.arange(offset, offset + length, dtype=jnp.int32), (B, length))
  zeros = jnp.zeros((B, length), jnp.int32)
  return TokenIds(sample=zeros, split=zeros, mode=zeros, order=order), order


def _decoder_inputs(hidden):
  und_h = jax.random.normal(jax.random.key(1), (B, LU, hidden))
  gen_h = jax.random.normal(jax.random.key(2), (B, LG, hidden))
  (und_ids, und_pos), (gen_ids, gen_pos) = _ids(LU, 0), _ids(LG, LU)
  return und_h, gen_h, und_ids, gen_ids, und_pos, gen_pos


def _decoder(scope, unroll, remat="none"):
  llm = medq_uni.get_config("size=tiny").model.llm
  return MoTDecoder(llm, scope, "xla", remat_policy=remat, scan_unroll=unroll), llm


def _loss(model, params, inputs):
  und, gen = model.apply({"params": params}, *inputs)
  return jnp.sum(und**2) + jnp.sum(gen**2)


@pytest.mark.parametrize("scope", ["ffn", "all"])
@pytest.mark.parametrize("remat", ["none", "full"])
def test_unrolled_decoder_equals_rolled(scope, remat):
  rolled, llm = _decoder(scope, False, remat)
  unrolled, _ = _decoder(scope, True, remat)
  inputs = _decoder_inputs(llm.hidden_size)
  params = nn.unbox(rolled.init(jax.random.key(0), *inputs)["params"])
  params_unrolled = nn.unbox(unrolled.init(jax.random.key(0), *inputs)["params"])
  # One parameter tree: a checkpoint of either restores into the other.
  assert jax.tree.structure(params) == jax.tree.structure(params_unrolled)
  jax.tree.map(np.testing.assert_array_equal, params, params_unrolled)
  out = jax.jit(rolled.apply)({"params": params}, *inputs)
  out_unrolled = jax.jit(unrolled.apply)({"params": params}, *inputs)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), out, out_unrolled)
  grads = jax.jit(jax.grad(lambda p: _loss(rolled, p, inputs)))(params)
  grads_unrolled = jax.jit(jax.grad(lambda p: _loss(unrolled, p, inputs)))(params)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads, grads_unrolled
  )


def _compiled_text(model, params, inputs):
  grad = jax.jit(jax.grad(lambda p: _loss(model, p, inputs)))
  return grad.lower(params).compile().as_text()


def test_unrolled_program_has_no_layer_loop():
  """The knob does what it is for: the rolled stack is a while loop over stacked buffers, the
  unrolled one is straight-line code (the reference attention has no loop of its own)."""
  rolled, llm = _decoder("ffn", False)
  unrolled, _ = _decoder("ffn", True)
  inputs = _decoder_inputs(llm.hidden_size)
  params = nn.unbox(rolled.init(jax.random.key(0), *inputs)["params"])
  assert " while(" in _compiled_text(rolled, params, inputs)
  assert " while(" not in _compiled_text(unrolled, params, inputs)


def _stream_width_joins(model, params, inputs, width):
  """Shapes of every concatenate/slice/split (forward and backward, nested jaxprs included)
  whose operands or results are 3-D of last dimension `width`: joins or slices of a stream."""
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name in ("concatenate", "slice", "split"):
        shapes = [tuple(v.aval.shape) for v in (*eqn.invars, *eqn.outvars)]
        found.extend(s for s in shapes if len(s) == 3 and s[-1] == width)
      for value in eqn.params.values():
        for sub in value if isinstance(value, (tuple, list)) else (value,):
          if hasattr(sub, "eqns"):
            walk(sub)
          elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
            walk(sub.jaxpr)

  walk(jax.make_jaxpr(jax.grad(lambda p: _loss(model, p, inputs)))(params).jaxpr)
  return found


@pytest.mark.parametrize("unroll", [False, True])
def test_all_scope_never_joins_or_slices_the_streams(unroll):
  """expert_scope='all': the residual streams are never joined or sliced, forward or backward;
  only q/k/v and the attention output ([B, L, heads, head_dim]) are joined and split."""
  model, llm = _decoder("all", unroll)
  inputs = _decoder_inputs(llm.hidden_size)
  params = nn.unbox(model.init(jax.random.key(0), *inputs)["params"])
  assert _stream_width_joins(model, params, inputs, llm.hidden_size) == []
  # The check sees such ops where they exist: 'ffn' joins the normed streams for the shared
  # q/k/v projections, once per layer.
  ffn, _ = _decoder("ffn", unroll)
  ffn_params = nn.unbox(ffn.init(jax.random.key(0), *inputs)["params"])
  joins = _stream_width_joins(ffn, ffn_params, inputs, llm.hidden_size)
  assert joins.count((B, LU + LG, llm.hidden_size)) >= llm.num_layers


def test_unrolled_vit_equals_rolled():
  config = medq_uni.get_config("size=tiny").model.vit
  image = jax.random.normal(jax.random.key(2), (2, 32, 16, config.num_channels))
  patches, ids = image_to_patches(image, config.patch_size, config.image_size // config.patch_size)
  rolled = SiglipVisionEncoder(config)
  unrolled = SiglipVisionEncoder(config, scan_unroll=True)
  variables = rolled.init(jax.random.key(0), patches, ids)
  assert jax.tree.structure(variables) == jax.tree.structure(
    unrolled.init(jax.random.key(0), patches, ids)
  )
  np.testing.assert_allclose(
    jax.jit(unrolled.apply)(variables, patches, ids),
    jax.jit(rolled.apply)(variables, patches, ids),
    atol=1e-5,
  )


def test_sizes_unroll_only_the_cpu_sizes():
  unrolled = {
    size: medq_uni.get_config(f"size={size}").model.scan_unroll
    for size in ("tiny", "small", "base")
  }
  assert unrolled == {"tiny": True, "small": True, "base": False}
