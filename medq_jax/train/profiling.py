"""Where a train step's time goes: the step `medq-train` runs, on the batches its loader makes.

`profile_training(config, tokenizer_dir, steps)` builds the run exactly as the loop does
(`state.build_setup`, `step.make_train_step`, `data.make_train_iterator`, the same jit shardings
and donation), then
  * times `steps` real steps, each blocked on, with the host's wait for the next batch apart;
  * reads the step's FLOPs from XLA's cost analysis of the step lowered with its layers unrolled
    (`step_flops`: XLA counts a scanned loop's body once) and counts them analytically beside it;
  * measures the fp32 (or the compute dtype's) matmul peak of this process on this device;
  * splits the step into parts by timing jitted sub-computations on the same batch and params:
    the model forward (loss without pixel terms), its backward, the frozen VAE's encode, the pixel
    losses (x0_hat decode + L1/SSIM, forward and backward), the optimizer update, and host time.
The parts are measured as separate programs, so they need not add up exactly to the step; the
table shows the sum beside the step. A `jax.profiler` trace of the timed steps is written too.
FLOPs and the peak are totals over the mesh's devices; on fake CPU devices (which share the same
cores) the peak is not additive, so profile CPU runs on one device.

batches="synthetic" feeds the same step rows that the same packer (`layout.PackExamples`) makes
from in-memory examples (random images, a MedQ-Uni-length instruction and description) instead of
the data loader: for a machine without the data stack (TorchIO, Grain, TFDS). The step, its
shapes and its FLOPs are the loader's; the data wait is then the in-memory packing's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from medq_jax import layout as layout_lib
from medq_jax import sharding as sharding_lib
from medq_jax.packing import examples_in_batch
from medq_jax.train import precision as precision_lib
from medq_jax.train import state as state_lib
from medq_jax.train import step as step_lib
from medq_jax.train.timing import interleaved_medians, median_seconds, print_table


@dataclasses.dataclass
class StepProfile:
  """The figures `medq-profile` prints (seconds are medians over the timed steps)."""

  step_seconds: float
  data_wait_seconds: float
  examples_per_second: float
  tokens_per_second: float  # packed row positions (und + gen, padding included) per second
  real_tokens_per_second: float  # the same without padding
  xla_flops: float  # per step, all devices (`step_flops`: XLA's count, layers unrolled)
  analytic_flops: float  # per step, all devices
  peak_flops_per_second: float  # one device's measured matmul peak x devices
  datasheet_flops_per_second: float  # train.peak_tflops_per_device x devices (0: not given)
  parts: dict[str, float]  # part name -> seconds
  trace_dir: str | None

  @property
  def mfu(self) -> float:
    """Achieved XLA FLOP/s of the step over the measured matmul peak."""
    return self.xla_flops / self.step_seconds / self.peak_flops_per_second

  @property
  def mfu_datasheet(self) -> float:
    """Achieved XLA FLOP/s over the datasheet peak (how MaxText reports MFU); 0 when unknown."""
    if not self.datasheet_flops_per_second:
      return 0.0
    return self.xla_flops / self.step_seconds / self.datasheet_flops_per_second

  @property
  def data_wait_fraction(self) -> float:
    return self.data_wait_seconds / (self.step_seconds + self.data_wait_seconds)


def step_flops(config, batch: dict, mesh=None) -> float:
  """Model FLOPs of one train step over all devices: XLA's cost analysis of the same step
  lowered without loops or recomputation. XLA counts a while loop's body once, so the scanned
  step's own analysis counts one layer of each scanned stack (`small` stage 2: 79.5 instead of
  152.3 GFLOP); hence layers unrolled (`model.scan_layers=False`), the reference attention
  (`xla`: the chunked kernel loops over rows and chunks and recomputes the logits in its
  backward, cuDNN's is a custom call XLA does not count), one micro-batch (accumulation is a
  scan) and no rematerialisation: what MFU counts (MaxText's convention), not hardware FLOPs.
  Only lowered, from abstract arguments: nothing is compiled, run or allocated. `batch`: the
  global batch (arrays or ShapeDtypeStructs)."""
  unrolled = ml_collections.ConfigDict(config.to_dict())
  unrolled.model.scan_layers = False
  unrolled.model.attention_impl = "xla"
  unrolled.model.vae.attention_impl = "xla"  # a key only this copy has (VAE configs are saved)
  unrolled.model.remat_policy = "none"
  unrolled.train.grad_accum_steps = 1
  model_config = precision_lib.model_config(unrolled)
  spec = layout_lib.LayoutSpec.from_config(model_config, unrolled.layout, unrolled.train.stage)
  model, vae = state_lib.build_models(model_config)
  key = jax.random.key(0)
  params, vae_params = map(nn.unbox, state_lib.abstract_params(model, vae, spec, model_config))
  optimizer = state_lib.make_optimizer(unrolled.train)
  ema_decay = unrolled.train.get("ema_decay", 0.0)
  state = jax.eval_shape(lambda p: state_lib.create_train_state(p, optimizer, ema_decay), params)
  step = step_lib.make_train_step(model, vae, optimizer, model_config, unrolled.train)
  abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  rng = jax.eval_shape(lambda: key)
  context = (
    sharding_lib.mesh_context(mesh, config.sharding_rules)
    if mesh is not None
    else contextlib.nullcontext()
  )
  with context:
    analysis = jax.jit(step).lower(state, vae_params, abstract_batch, rng).cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", 0.0))


def peak_matmul_size() -> int:
  """The matmul side that reaches an accelerator's peak (8192) or a CPU's without minutes of
  timing (1024)."""
  return 1024 if jax.default_backend() == "cpu" else 8192


def matmul_peak_flops(dtype=jnp.float32, size: int = 1024, iters: int = 10) -> float:
  """FLOP/s of a square [size, size] matmul chain in `dtype` on the default device: the peak the
  step's MFU is measured against (same process, same threads, the step's compute dtype)."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size)), dtype)
  b = jnp.asarray(np.random.default_rng(1).standard_normal((size, size)), dtype)
  chain = 8

  @jax.jit
  def run(a, b):
    x = a
    for _ in range(chain):
      x = (x @ b) * (1.0 / size)
    return x

  seconds = median_seconds(lambda: run(a, b), iters=iters)
  return 2.0 * size**3 * chain / seconds


def analytic_decoder_flops(llm, rows: int, und_len: int, gen_len: int) -> float:
  """Matmul FLOPs of the decoder's forward over `rows` rows of und + gen tokens (padding
  included, as computed): q/k/v/o projections, SwiGLU MLPs, attention scores and values."""
  d, heads, kv_heads, ff = llm.hidden_size, llm.num_heads, llm.num_kv_heads, llm.intermediate_size
  head_dim = llm.get("head_dim") or d // heads
  per_token_layer = 2 * (d * heads * head_dim * 2 + d * kv_heads * head_dim * 2 + 3 * d * ff)
  length = und_len + gen_len
  attention_layer = 2 * 2 * length * length * heads * head_dim
  return float(rows * llm.num_layers * (per_token_layer * length + attention_layer))


def analytic_step_flops(model_config, batch: dict, stage: int) -> float:
  """Matmul FLOPs of one train step counted from the shapes (padding included, as computed):
  the decoder (`analytic_decoder_flops`), the LM head at the positions the step runs it on
  (stage 2: those with a description loss, `model.max_ce_tokens` per example slot; stage 1 has
  no CE, so none), the ViT, forward x 3 for forward + backward (the usual 6N rule; stage 1's
  frozen und weights still need activation gradients, so this over-counts stage 1 by their
  weight gradients). The VAE, the pixel losses and elementwise work are not counted (XLA's
  figure includes them, so it is the larger)."""
  llm = model_config.llm
  rows, und_len = batch["und_token_ids"].shape
  gen_len = batch["gen_positions"].shape[1]
  slots = batch["vae_images"].shape[1] // layout_lib.IMAGES_PER_EXAMPLE
  lm_positions = step_lib.ce_positions(model_config, und_len, slots) if stage == 2 else 0
  lm_head = 2 * lm_positions * llm.hidden_size * llm.vocab_size
  vit = model_config.vit
  vit_tokens = batch["vit_patches"].shape[-2]
  vit_layer = (
    2 * vit_tokens * (4 * vit.hidden_size**2 + 2 * vit.hidden_size * vit.intermediate_size)
  )
  vit_layer += 2 * 2 * vit_tokens**2 * vit.hidden_size
  forward = analytic_decoder_flops(llm, rows, und_len, gen_len)
  forward += rows * (lm_head + vit.num_layers * vit_layer)
  return 3.0 * forward


# A MedQ-Uni-length instruction and five-aspect description for synthetic rows.
SYNTHETIC_INSTRUCTION = "Assess the quality of this medical image, then restore it."
SYNTHETIC_DESCRIPTION = (
  "Modality: CT. Noise: moderate quantum noise across the soft tissue, with a fine grain over the "
  "liver parenchyma. Sharpness: vessel edges are slightly blurred. Contrast: low-contrast lesions "
  "are hard to separate from the background. Artefacts: no motion or streak artefacts are "
  "visible. Overall, the quality of this image is usable for diagnosis with caution."
)


def synthetic_texts() -> list[str]:
  """The texts synthetic rows are made of (for training a tokenizer that covers them)."""
  return [SYNTHETIC_INSTRUCTION, SYNTHETIC_DESCRIPTION]


def synthetic_tokenizer(config, workdir: str) -> str:
  """A byte-level BPE trained on the synthetic rows' texts, under workdir/synthetic_tokenizer:
  never in workdir/tokenizer, where a later loader run would take it for the dataset's own."""
  from medq_jax.tokenizer import train_bpe_tokenizer

  tokenizer_dir = os.path.join(workdir, "synthetic_tokenizer")
  vocab_size = min(int(config.model.llm.vocab_size), 1024)
  train_bpe_tokenizer(synthetic_texts() * 20, vocab_size, tokenizer_dir)
  return tokenizer_dir


def synthetic_batches(config, tokenizer_dir: str, spec: layout_lib.LayoutSpec, seed: int = 0):
  """Endless host-local batches packed by the trainer's packer (`layout.PackExamples`) from
  in-memory examples: random grey images and the texts above (unpacked rows only)."""
  if spec.packed:
    raise ValueError("batches='synthetic' packs one example per row; set pack_examples_per_row=1")
  pack = layout_lib.PackExamples(tokenizer_dir, spec)
  rng = np.random.default_rng(seed)
  rows = sharding_lib.per_host_batch_size(config.train.batch_size)
  side = spec.vae_image_size
  while True:
    examples = [
      dict(
        id=f"synthetic-{index}",
        low=rng.random((side, side), np.float32),
        high=rng.random((side, side), np.float32),
        instruction=SYNTHETIC_INSTRUCTION,
        description=SYNTHETIC_DESCRIPTION,
      )
      for index in range(rows)
    ]
    yield layout_lib.collate([pack(example) for example in examples])


def _real_tokens(batch: dict) -> int:
  return int((batch["und_sample_ids"] >= 0).sum() + (batch["gen_sample_ids"] >= 0).sum())


def _variant(train_config, **overrides):
  config = ml_collections.ConfigDict(train_config.to_dict())
  config.update(overrides)
  return config


def _part_programs(setup, config, params, vae_params, batch, rng) -> dict[str, Callable]:
  """Zero-argument callables, one per part of the step, jitted on the same inputs."""
  model, vae, train = setup.model, setup.vae, config.train
  no_pixels = _variant(train, alpha_l1=0.0, beta_ssim=0.0)
  loss_plain = step_lib.make_loss_fn(model, vae, config.model, no_pixels)
  loss_full = step_lib.make_loss_fn(model, vae, config.model, train)
  grad_plain = jax.jit(step_lib.make_grad_fn(loss_plain, no_pixels))
  grad_full = jax.jit(step_lib.make_grad_fn(loss_full, train))
  forward = jax.jit(loss_plain)
  sample_posterior = bool(train.get("sample_vae_posterior", True))

  def encode(vae_params, images, rng):
    flat = images.reshape((-1,) + images.shape[2:])
    return vae.apply(
      {"params": vae_params}, flat, rng if sample_posterior else None, method=vae.encode
    )

  encode = jax.jit(encode)
  trainable, _ = state_lib.split_params(params, train)
  opt_state = setup.optimizer.init(trainable)
  update = jax.jit(lambda g, s, p: setup.optimizer.update(g, s, p))
  grads = jax.tree_util.tree_map(jnp.zeros_like, trainable)
  return {
    "vae_encode": lambda: encode(vae_params, batch["vae_images"], rng),
    "forward": lambda: forward(params, vae_params, batch, rng),
    "forward_backward": lambda: grad_plain(params, vae_params, batch, rng),
    "forward_backward_pixels": lambda: grad_full(params, vae_params, batch, rng),
    "optimizer": lambda: update(grads, opt_state, trainable),
  }


def profile_training(
  config,
  tokenizer_dir: str,
  steps: int = 10,
  warmup: int = 2,
  trace_dir: str | None = None,
  part_iters: int = 5,
  say: Callable[[str], None] = print,
  batches: str = "loader",
) -> StepProfile:
  """Runs `warmup + steps` real train steps of `config` and measures them (see module doc)."""
  init_rng, loop_rng = jax.random.split(jax.random.key(config.train.seed))
  setup = state_lib.build_setup(config, init_rng)
  optimizer, mesh = setup.optimizer, setup.mesh
  state = state_lib.init_train_state(
    setup.params, optimizer, mesh, config.train.get("ema_decay", 0.0)
  )
  shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
  step_fn = step_lib.make_train_step(setup.model, setup.vae, optimizer, config.model, config.train)
  if batches == "synthetic":
    iterator = synthetic_batches(config, tokenizer_dir, setup.spec)
  elif batches == "loader":
    from medq_jax.train import data as data_lib

    iterator = map(
      data_lib.as_numpy_batch, data_lib.make_train_iterator(config, tokenizer_dir, setup.spec)
    )
  else:
    raise ValueError(f"batches: expected 'loader' or 'synthetic', got {batches!r}")
  next_batch = lambda: sharding_lib.global_batch(next(iterator), mesh)
  batch = next_batch()
  host_batch = {k: np.asarray(v) for k, v in batch.items()}
  with sharding_lib.mesh_context(mesh, config.sharding_rules):
    compiled = (
      jax.jit(
        step_fn,
        in_shardings=(shardings, setup.vae_shardings, None, None),
        out_shardings=(shardings, None),
        donate_argnums=(0,),
      )
      .lower(state, setup.vae_params, batch, loop_rng)
      .compile()
    )
  say(f"profile: step compiled; {warmup} warm-up + {steps} timed steps")
  step_times, wait_times = [], []
  trace = jax.profiler.trace(trace_dir) if trace_dir else contextlib.nullcontext()
  for _ in range(warmup):
    state, metrics = compiled(state, setup.vae_params, batch, loop_rng)
    jax.block_until_ready(metrics)
    batch = next_batch()
  with trace:
    for index in range(steps):
      start = time.perf_counter()
      state, metrics = compiled(state, setup.vae_params, batch, loop_rng)
      jax.block_until_ready((state, metrics))
      step_times.append(time.perf_counter() - start)
      start = time.perf_counter()
      if index + 1 < steps:
        batch = next_batch()
        wait_times.append(time.perf_counter() - start)
  step_seconds = statistics.median(step_times)
  wait = statistics.median(wait_times) if wait_times else 0.0
  devices = mesh.devices.size
  positions = host_batch["und_token_ids"].size + host_batch["gen_positions"].size

  compute_dtype = jnp.dtype(precision_lib.model_config(config).dtype)
  say("profile: timing the step's parts")
  params = jax.device_get(state.params)
  parts_fns = _part_programs(setup, config, params, setup.vae_params, host_batch, loop_rng)
  seconds = interleaved_medians(parts_fns, part_iters)
  parts = {
    "model forward (decoder, ViT, embeddings; VAE encode inside)": seconds["forward"],
    "  of which frozen VAE encode": seconds["vae_encode"],
    "model backward (trainable subtree)": seconds["forward_backward"] - seconds["forward"],
    "pixel losses (x0_hat VAE decode + L1/SSIM, fwd+bwd)": (
      seconds["forward_backward_pixels"] - seconds["forward_backward"]
    ),
    "optimizer update": seconds["optimizer"],
  }
  parts["host: waiting for the next batch"] = wait
  return StepProfile(
    step_seconds=step_seconds,
    data_wait_seconds=wait,
    examples_per_second=examples_in_batch(host_batch) * jax.process_count() / step_seconds,
    tokens_per_second=positions / step_seconds,
    real_tokens_per_second=_real_tokens(host_batch) / step_seconds,
    xla_flops=step_flops(config, host_batch, mesh),
    analytic_flops=analytic_step_flops(config.model, host_batch, config.train.stage),
    peak_flops_per_second=matmul_peak_flops(compute_dtype, peak_matmul_size()) * devices,
    datasheet_flops_per_second=float(config.train.get("peak_tflops_per_device", 0.0))
    * 1e12
    * devices,
    parts=parts,
    trace_dir=trace_dir,
  )


def print_profile(profile: StepProfile, config) -> None:
  """The tables `medq-profile` prints; the last line is `mfu=<fraction>`."""
  gflop = lambda x: x / 1e9
  print(
    f"config: size={config.model.size} stage={config.train.stage} "
    f"batch={config.train.batch_size} devices={config.mesh.shape}"
  )
  print_table(
    ["figure", "value"],
    [
      ["step seconds (median)", profile.step_seconds],
      ["examples / s", profile.examples_per_second],
      ["token positions / s (padding included)", profile.tokens_per_second],
      ["real tokens / s", profile.real_tokens_per_second],
      ["data-wait fraction", profile.data_wait_fraction],
      ["GFLOP / step (XLA cost analysis, layers unrolled)", gflop(profile.xla_flops)],
      ["GFLOP / step (analytic: decoder, ViT, LM head; 3x forward)", gflop(profile.analytic_flops)],
      ["matmul peak GFLOP/s (this process, compute dtype)", gflop(profile.peak_flops_per_second)],
      [
        "datasheet peak GFLOP/s (train.peak_tflops_per_device)",
        gflop(profile.datasheet_flops_per_second),
      ],
      ["achieved GFLOP/s (XLA)", gflop(profile.xla_flops / profile.step_seconds)],
    ],
  )
  print()
  total = sum(v for k, v in profile.parts.items() if not k.startswith(" "))
  print_table(
    ["part (timed as its own program)", "seconds", "share of step"],
    [[name, seconds, seconds / profile.step_seconds] for name, seconds in profile.parts.items()]
    + [["sum of parts", total, total / profile.step_seconds]],
  )
  if profile.trace_dir:
    print(f"trace: {profile.trace_dir}")
  if profile.datasheet_flops_per_second:
    print(f"mfu_datasheet={profile.mfu_datasheet:.4f}")
  print(f"mfu={profile.mfu:.4f}")
