"""The per-device memory budget of the sharded train step (docs/scale.md), worked from the
shapes and checked against XLA: the step the trainer runs (`medq_jax/train/loop.py`: same state
shardings, donation and batch sharding) compiled ahead of time from abstract shapes only, so no
parameter is ever allocated. Flag-free, so tests import it; `launch/compile_check.py` is the
command.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from medq_jax import layout as layout_lib
from medq_jax import sharding as sharding_lib
from medq_jax.train import state as state_lib
from medq_jax.train import step as step_lib
from medq_jax.train.timing import compile_seconds
from medq_jax.types import latent_dim

GIB = 2**30


@dataclasses.dataclass
class AbstractStep:
  """The trainer's jitted step and its abstract arguments (ShapeDtypeStructs with shardings)."""

  config: Any
  jitted: Any
  state: Any
  vae_params: Any
  batch: dict
  rng: Any
  mesh: Any
  spec: layout_lib.LayoutSpec
  # What loop.py's own init (jit(create_train_state)) does with the AdamW moments: "" when it
  # shards them like the parameters, else what goes wrong (replicated, or its compile error).
  loop_init_problem: str


def _loop_init_problem(init_state, params, state_shardings) -> str:
  """How the trainer's init (`state.jitted_state_init`, compiled here) places the AdamW moments,
  when not like the parameters (a regression guard: it shards them like the parameters)."""
  try:
    loop_shardings = init_state.lower(params).compile().output_shardings
  except Exception as error:  # e.g. RESOURCE_EXHAUSTED on a TPU topology
    return f"does not compile: {str(error).splitlines()[0][:300]}"
  replicated = any(
    mine.spec and not theirs.spec
    for mine, theirs in zip(
      jax.tree_util.tree_leaves(state_shardings.opt_state),
      jax.tree_util.tree_leaves(loop_shardings.opt_state),
    )
  )
  return "replicates them on every device" if replicated else ""


def abstract_step(config, devices=None, check_loop_init: bool = True) -> AbstractStep:
  """The train step jitted as `loop.train` jits it (donated state, state shardings in and out,
  batch over ('data', 'fsdp')), with abstract sharded arguments; nothing is allocated.

  Parameter shardings come from the logical rules (as `state.init_params_sharded`); the AdamW
  moments take their parameter's sharding (`train_state_shardings`: FSDP shards them too).
  `check_loop_init` also compiles loop.py's own init to report how it places the moments.
  """
  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, config.train.stage)
  model, vae = state_lib.build_models(config.model)
  mesh = sharding_lib.make_mesh(config.mesh, devices)
  # From the init functions init_params_sharded uses (one definition of what a model inits from).
  params, vae_params = (
    sharding_lib.placed_shapes(
      nn.unbox(boxed), sharding_lib.mesh_shardings(boxed, mesh, config.sharding_rules)
    )
    for boxed in state_lib.abstract_params(model, vae, spec, config.model)
  )
  optimizer = state_lib.make_optimizer(config.train)
  init_state = state_lib.jitted_state_init(params, optimizer, mesh)
  state_shape = jax.eval_shape(init_state, params)
  state_shardings = state_lib.train_state_shardings(state_shape, params, mesh)
  state = sharding_lib.placed_shapes(state_shape, state_shardings)
  # The trainer's own init, compiled: does it place the moments as the budget assumes?
  loop_init_problem = (
    _loop_init_problem(init_state, params, state_shardings) if check_loop_init else ""
  )

  batch_sharding = sharding_lib.batch_sharding(mesh)
  zeros = layout_lib.zeros_batch(spec, 1, latent_dim(config.model))
  batch = {
    k: jax.ShapeDtypeStruct(
      (config.train.batch_size,) + v.shape[1:], v.dtype, sharding=batch_sharding
    )
    for k, v in zeros.items()
    if k not in ("gen_latents", "gen_timesteps")
  }
  key_shape = jax.eval_shape(lambda: jax.random.key(0))
  rng = jax.ShapeDtypeStruct(
    key_shape.shape, key_shape.dtype, sharding=sharding_lib.replicated(mesh)
  )
  step = step_lib.make_train_step(model, vae, optimizer, config.model, config.train)
  vae_shardings = jax.tree_util.tree_map(lambda a: a.sharding, vae_params)
  jitted = jax.jit(
    step,
    in_shardings=(state_shardings, vae_shardings, None, None),
    out_shardings=(state_shardings, None),
    donate_argnums=(0,),
  )
  return AbstractStep(config, jitted, state, vae_params, batch, rng, mesh, spec, loop_init_problem)


def shard_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (its shard of every leaf)."""
  return sum(
    math.prod(leaf.sharding.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    for leaf in jax.tree_util.tree_leaves(tree)
  )


@dataclasses.dataclass
class Budget:
  """The worked per-device budget (bytes), docs/scale.md's arithmetic from the shapes."""

  params: int
  moments: int
  vae_params: int
  batch: int
  grads: int
  saved_activations: int
  layer_working_set: int
  logits: int
  gathered_weights: int

  @property
  def arguments(self) -> int:
    return self.params + self.moments + self.vae_params + self.batch

  @property
  def temporaries(self) -> int:
    return (
      self.grads
      + self.saved_activations
      + self.layer_working_set
      + self.logits
      + self.gathered_weights
    )


def rows_per_device(config, mesh) -> int:
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  return -(-config.train.batch_size // shards)


def activation_bytes(config, spec, mesh) -> tuple[int, int, int]:
  """(saved across the decoder's layers, one layer's backward working set, LM-head logits and
  their gradient) per device under `config.model.remat_policy`; docs/scale.md derives them.

  b rows of T = und + gen tokens (a packed row's: `spec.row_und_len + spec.row_gen_len`), hidden H, L layers, compute dtype of dt bytes:
  - saved: `full` keeps each layer's input, L b T H dt; `dots_with_no_batch_dims_saveable`
    also each projection's output, L b T (2H + 2 kv hd + H + 2 I) dt; `none` keeps every layer's
    working set.
  - working set of one layer: fp32 attention logits and weights 2 b nh T^2 4, the MLP's
    gate/up/activation 3 b T I dt, q/k/v/o b T (2H + 2 kv hd) dt.
  - logits (stage 2's CE): b C V 4, twice (values and gradient), V split over `tensor`, at
    the C positions per row the LM head runs on (`step.ce_positions`: `model.max_ce_tokens` per
    example).
  """
  llm, mesh_shape = config.model.llm, mesh.shape
  b = rows_per_device(config, mesh)
  t = spec.row_und_len + spec.row_gen_len  # a packed row holds examples_per_row examples
  h, inter, layers = llm.hidden_size, llm.intermediate_size, llm.num_layers
  heads = llm.num_heads // mesh_shape["tensor"]
  kv = max(1, llm.num_kv_heads // mesh_shape["tensor"])
  inter_shard = inter // mesh_shape["tensor"]
  dt = np.dtype(config.model.dtype).itemsize
  projections = b * t * (2 * heads * llm.head_dim + 2 * kv * llm.head_dim) * dt
  working = 2 * b * heads * t * t * 4 + 3 * b * t * inter_shard * dt + projections
  carry = b * t * h * dt
  policy = config.model.remat_policy
  if policy == "full":
    saved = layers * carry
  elif policy == "dots_with_no_batch_dims_saveable":
    saved = layers * (carry + projections + 3 * b * t * inter_shard * dt)
  else:
    saved = layers * (carry + working)
  ce_len = step_lib.ce_positions(config.model, spec.row_und_len, spec.examples_per_row)
  logits = 2 * b * ce_len * (llm.vocab_size // mesh_shape["tensor"]) * 4
  return saved, working, logits if config.train.stage == 2 else 0


def gathered_weight_bytes(step: AbstractStep) -> int:
  """Whole weights FSDP gathers onto a device: two decoder layers in the compute dtype (the one
  computing and the next, all-gathered ahead), and the token embedding and LM head (fp32)."""
  config = step.config
  dt = np.dtype(config.model.dtype).itemsize
  layers = step.state.params["decoder"]["layers"]
  per_layer = sum(leaf.size for leaf in jax.tree_util.tree_leaves(layers)) // (
    config.model.llm.num_layers
  )
  tables = sum(
    step.state.params[name][leaf].size
    for name, leaf in (("embed_tokens", "embedding"), ("lm_head", "kernel"))
    if name in step.state.params
  )
  return 2 * per_layer * dt + tables * 4


def worked_budget(step: AbstractStep) -> Budget:
  config = step.config
  trainable, _ = state_lib.split_params(step.state.params, config.train)
  saved, working, logits = activation_bytes(config, step.spec, step.mesh)
  return Budget(
    params=shard_bytes(step.state.params),
    moments=shard_bytes(step.state.opt_state),
    vae_params=shard_bytes(step.vae_params),
    batch=shard_bytes(step.batch),
    grads=shard_bytes(trainable),
    saved_activations=saved,
    layer_working_set=working,
    logits=logits,
    gathered_weights=gathered_weight_bytes(step),
  )


def compiled_peak(memory) -> int:
  """Per-device peak from `memory_analysis()`: arguments + temporaries + the outputs that do
  not reuse a donated argument's buffer."""
  return (
    memory.argument_size_in_bytes
    + memory.temp_size_in_bytes
    + memory.output_size_in_bytes
    - memory.alias_size_in_bytes
  )


def table(budget: Budget, memory) -> list[list[Any]]:
  """Rows of (item, worked GiB, compiled GiB) for print_table."""
  gib = lambda n: round(n / GIB, 3)
  out = memory.output_size_in_bytes - memory.alias_size_in_bytes
  return [
    ["parameters (fp32 master, sharded)", gib(budget.params), ""],
    ["AdamW moments (2 x trainable, sharded)", gib(budget.moments), ""],
    ["VAE parameters (replicated)", gib(budget.vae_params), ""],
    ["batch shard", gib(budget.batch), ""],
    ["= arguments", gib(budget.arguments), gib(memory.argument_size_in_bytes)],
    ["gradients (trainable, fp32)", gib(budget.grads), ""],
    ["saved activations (remat policy)", gib(budget.saved_activations), ""],
    ["one layer's backward working set", gib(budget.layer_working_set), ""],
    ["LM-head logits + gradient (stage 2)", gib(budget.logits), ""],
    ["gathered weights (2 layers, embedding, LM head)", gib(budget.gathered_weights), ""],
    ["= temporaries (worked parts)", gib(budget.temporaries), gib(memory.temp_size_in_bytes)],
    ["outputs not aliased to the donated state", 0.0, gib(out)],
    ["peak per device", gib(budget.arguments + budget.temporaries), gib(compiled_peak(memory))],
  ]


def topology_devices(name: str):
  """The devices of a TPU topology (no TPU needed: libtpu's compiler), as MaxText's
  train_compile gets them."""
  from jax.experimental import topologies

  try:
    return topologies.get_topology_desc(platform="tpu", topology_name=name).devices
  except Exception as error:  # libtpu missing, or a topology it does not know
    raise SystemExit(
      f"--topology={name}: no TPU topology ({type(error).__name__}: {error}); it needs libtpu "
      "matching jaxlib (`pip install 'libtpu==0.0.42.*'`) and a name such as v5p:2x2x2"
    ) from None


def check(config, devices=None) -> tuple[Budget, Any, float, AbstractStep]:
  """Compiles the sharded train step of `config`; returns (worked budget, memory analysis,
  compile seconds, the abstract step)."""
  step = abstract_step(config, devices)
  with sharding_lib.mesh_context(step.mesh, config.sharding_rules):
    compiled, seconds = compile_seconds(
      step.jitted, step.state, step.vae_params, step.batch, step.rng
    )
  memory = compiled.memory_analysis()
  if memory is None:
    raise SystemExit(f"backend {step.mesh.devices.flat[0].platform}: no memory_analysis()")
  return worked_budget(step), memory, seconds, step
