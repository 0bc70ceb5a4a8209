"""Routing overhead of the two-stream MoT decoder: forward+backward step time of `small` with
expert_scope 'ffn' and 'all' against a single dense expert of the same per-token width (all
tokens in one stream: identical per-token FLOPs). Target: ratio <= 1.05.

  python -m launch.bench_routing --config=configs/medq_uni.py:size=small --batch=4
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import flags

from launch import cli, distributed
from medq_jax.models.attention import TokenIds
from medq_jax.models.decoder import MoTDecoder
from medq_jax.models.layers import dtype_of
from medq_jax.train.timing import compile_seconds, interleaved_medians, print_table

_CONFIG = cli.define_config_file("config", "configs/medq_uni.py:size=small", "Config file.")
_BATCH = flags.DEFINE_integer("batch", 4, "Rows per step.")
_UND_LEN = flags.DEFINE_integer("und_len", 192, "und tokens per row.")
_GEN_LEN = flags.DEFINE_integer("gen_len", 64, "gen tokens per row.")
_ITERS = flags.DEFINE_integer("iters", 10, "Timed rounds (one call of each variant per round).")
flags.adopt_module_key_flags(distributed)


def _ids(batch, length, offset):
  order = jnp.broadcast_to(jnp.arange(offset, offset + length, dtype=jnp.int32), (batch, length))
  zeros = jnp.zeros((batch, length), jnp.int32)
  return TokenIds(sample=zeros, split=zeros, mode=zeros, order=order), order


def step_program(model_config, scope: str, und_len: int, gen_len: int, batch: int):
  """(compile s, zero-argument fwd+bwd call) of the decoder with `und_len` und and `gen_len` gen
  tokens."""
  llm = model_config.llm
  decoder = MoTDecoder(
    llm,
    scope,
    model_config.attention_impl,
    dtype_of(model_config.dtype),
    dtype_of(model_config.param_dtype),
    model_config.scan_layers,
    model_config.remat_policy,
    model_config.scan_unroll,
  )
  key = jax.random.PRNGKey(0)
  und_h = jax.random.normal(key, (batch, und_len, llm.hidden_size))
  gen_h = jax.random.normal(key, (batch, gen_len, llm.hidden_size))
  und_ids, und_pos = _ids(batch, und_len, 0)
  gen_ids, gen_pos = _ids(batch, gen_len, und_len)
  params = nn.unbox(decoder.init(key, und_h, gen_h, und_ids, gen_ids, und_pos, gen_pos))

  def loss(p, u, g):
    out_u, out_g = decoder.apply(p, u, g, und_ids, gen_ids, und_pos, gen_pos)
    return jnp.sum(out_u.astype(jnp.float32) ** 2) + jnp.sum(out_g.astype(jnp.float32) ** 2)

  grad_fn = jax.jit(jax.grad(loss))
  compiled, seconds = compile_seconds(grad_fn, params, und_h, gen_h)
  return seconds, lambda: compiled(params, und_h, gen_h)


def main(argv):
  del argv
  distributed.initialize()
  config = _CONFIG.value
  total = _UND_LEN.value + _GEN_LEN.value
  program = functools.partial(step_program, config.model, batch=_BATCH.value)
  programs = {"dense": program(scope="ffn", und_len=total, gen_len=0)}
  for scope in ("ffn", "all"):
    programs[scope] = program(scope=scope, und_len=_UND_LEN.value, gen_len=_GEN_LEN.value)
  # Round-robin: other load on the host drifts over the three alike, so the ratios hold.
  seconds = interleaved_medians({name: call for name, (_, call) in programs.items()}, _ITERS.value)
  dense = seconds["dense"]
  rows = [["dense (one expert)", total, 0, programs["dense"][0], dense * 1e3, 1.0]]
  for scope in ("ffn", "all"):
    t = seconds[scope]
    rows.append(
      [f"MoT scope={scope}", _UND_LEN.value, _GEN_LEN.value, programs[scope][0], t * 1e3, t / dense]
    )
  print(
    f"size={config.model.size} layers={config.model.llm.num_layers} "
    f"hidden={config.model.llm.hidden_size} batch={_BATCH.value} backend={jax.default_backend()}"
  )
  print_table(
    ["variant", "und tokens", "gen tokens", "compile s", "fwd+bwd ms", "ratio vs dense"], rows
  )
  print(f"routing overhead: ffn {rows[1][5]:.3f}x, all {rows[2][5]:.3f}x (target <= 1.05)")


def run_main():
  cli.run(main)


if __name__ == "__main__":
  run_main()
