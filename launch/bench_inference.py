"""Inference benchmark on the path users run (`AssessRestore`), with random weights (timings do
not depend on the values; the stop token's logit is pinned so descriptions run to full length):

- description decoding, 256 new tokens: the engine's KV-cached loop vs a full recomputation of
  the whole sequence per token (same greedy tokens, asserted);
- restoration, 50 sampler steps, MedQ-Uni guidance (text 4, image 2): the prefix cache vs
  recomputing every context at every step (`use_prefix_cache=False`), description given;
- images/s of the full assess-then-restore (description generated, then restored).

Compilation is excluded (a warm-up call); each figure is the median of --repeats calls. The last
two lines are `decode_cached_speedup=<x>` (target >= 5) and `restore_prefix_cache_speedup=<x>`
(target >= 2).

  python -m launch.bench_inference                                  # size=small, CPU
  python -m launch.bench_inference --size=base --dtype=bfloat16     # GPU
  python -m launch.bench_inference --config=configs/medq_uni.py:size=tiny,stage=2 --repeats=1
"""

from __future__ import annotations

import dataclasses
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from launch import cli
from medq_jax import layout as layout_lib
from medq_jax.infer import contexts
from medq_jax.infer.assess_restore import AssessRestore, InferenceSettings, grey_to_model_rgb
from medq_jax.infer.decoding import DecodeSettings
from medq_jax.infer.sampler import SamplerSettings
from medq_jax.models.medq_uni import MedQUni, init_batch
from medq_jax.models.vae import FluxAutoEncoder
from medq_jax.tokenizer import special_ids, train_bpe_tokenizer
from medq_jax.train.timing import median_seconds, print_table

_CONFIG = cli.define_config_file("config", "configs/medq_uni.py:size=small,stage=2", "Config file.")
_SIZE = flags.DEFINE_string(
  "size", None, "Shorthand for --config=configs/medq_uni.py:size=SIZE,stage=2."
)
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute/param dtype.")
_BATCH = flags.DEFINE_integer("batch", 2, "Images per call.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 256, "Description tokens decoded.")
_STEPS = flags.DEFINE_integer("steps", 50, "Sampler timesteps (steps - 1 model evaluations).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per figure (median).")

INSTRUCTION = "Assess the quality of this image, then restore it."
DESCRIPTION = (
  "The CT image shows moderate quantum noise across the soft tissue, with a fine grain over the "
  "liver parenchyma. Vessel edges are slightly blurred and low-contrast lesions are hard to "
  "separate from the background. No motion or streak artefacts are visible. Overall, the "
  "quality of this image is usable."
)
# Logit tolerance of a near tie: where cached and recomputed greedy tokens part, the recomputed
# top-2 logits must be this close (reduction order; exact agreement is expected in float32 CPU).
TIE_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.1}


def random_setup(config, dtype: str, seed: int, tokenizer_dir: str):
  """(model_config, params, vae_params, tokenizer, spec) of a random model of `config.model`
  whose <|im_end|> logit is always 0, so greedy descriptions never stop early (the largest of
  the vocabulary's random logits is positive)."""
  model_config = config.model.copy_and_resolve_references()
  with model_config.unlocked():
    model_config.dtype = dtype
  words = [INSTRUCTION, DESCRIPTION, "Severe motion artefacts in the brain MRI; reject."]
  tokenizer = train_bpe_tokenizer(words * 20, min(model_config.llm.vocab_size, 1024), tokenizer_dir)
  spec = layout_lib.LayoutSpec.from_config(model_config, config.layout, 2)
  key_model, key_vae, key_head = jax.random.split(jax.random.key(seed), 3)
  model = MedQUni(model_config)
  params = nn.unbox(jax.jit(model.init)(key_model, init_batch(model_config))["params"])
  kernel = params["llm2vae"]["kernel"]  # zero at init (BAGEL): give velocities some signal
  params["llm2vae"]["kernel"] = 0.05 * jax.random.normal(key_head, kernel.shape, kernel.dtype)
  head = params["lm_head"]["kernel"]
  params["lm_head"]["kernel"] = head.at[:, special_ids(tokenizer)["im_end"]].set(0.0)
  params = jax.tree_util.tree_map(lambda x: x.astype(jnp.dtype(dtype)), params)
  vae = FluxAutoEncoder(model_config.vae)
  image = jnp.zeros((1, spec.vae_image_size, spec.vae_image_size, 3), jnp.float32)
  vae_params = nn.unbox(jax.jit(vae.init)(key_vae, image)["params"])
  return model_config, params, vae_params, tokenizer, spec


class RecomputedGreedy:
  """Greedy decoding without a cache: every new token runs the whole sequence (context plus the
  description so far, padded to its final length) through the model. The description slot is
  laid out once with placeholder tokens; a causal split makes the logits at position i depend
  on tokens <= i only, so the placeholders after the cursor change nothing."""

  def __init__(self, engine: AssessRestore, steps: int):
    self.engine, self.steps = engine, steps
    model = MedQUni(engine.model_config)

    def run(params, chunk, first):
      rows = jnp.arange(first.shape[0])

      def body(i, state):
        ids, gaps = state
        logits = model.apply({"params": params}, dict(chunk, und_token_ids=ids))["logits"]
        step_logits = logits[rows, first + i - 1]
        top2 = jax.lax.top_k(step_logits, 2)[0]
        ids = ids.at[rows, first + i].set(jnp.argmax(step_logits, axis=-1).astype(ids.dtype))
        return ids, gaps.at[:, i].set(top2[:, 0] - top2[:, 1])

      gaps = jnp.zeros((first.shape[0], steps), jnp.float32)
      ids, gaps = jax.lax.fori_loop(0, steps, body, (chunk["und_token_ids"], gaps))
      return ids[rows[:, None], first[:, None] + jnp.arange(steps)], gaps

    self._run = jax.jit(run)

  def __call__(self, images, instructions):
    """(tokens [B, steps], top-2 logit gap at each step [B, steps]) for grey images [B, H, W]."""
    engine, steps = self.engine, self.steps
    cond = engine._encode(
      engine.vae_params, jnp.asarray(grey_to_model_rgb(images, engine.spec.vae_image_size))
    )
    vit = grey_to_model_rgb(images, engine.spec.vit_image_size)
    placeholder = [engine.special["im_start"]] * steps
    rows = [
      contexts.build_context_row(
        engine.plan,
        dict(instruction=engine._encode_text(text), description=placeholder),
        engine.spec,
        engine.special,
      )[0]
      for text in instructions
    ]
    und_len = max(len(row.und["token_ids"]) for row in rows)
    chunk = contexts.stack_context(rows, engine.spec, engine.special, vit, und_len)
    chunk["gen_latents"] = np.asarray(cond)
    chunk["gen_timesteps"] = np.zeros(chunk["gen_positions"].shape, np.float32)
    first = contexts.last_token_index(chunk) - steps  # the description's first content token
    return self._run(engine.params, chunk, jnp.asarray(first))


def check_same_tokens(cached_ids, recomputed, gaps, stop_id: int, tolerance: float) -> int:
  """Rows' cached tokens equal the recomputed ones (up to the stop token), except after a near
  tie (the recomputed top-2 logits within `tolerance` where they first part). Returns the number
  of rows that part; raises AssertionError otherwise."""
  parted = 0
  for row, ids in enumerate(cached_ids):
    reference = np.asarray(recomputed[row]).tolist()
    if stop_id in reference:
      reference = reference[: reference.index(stop_id)]
    if ids == reference:
      continue
    step = next(i for i, (a, b) in enumerate(zip(ids + [-1], reference)) if a != b)
    gap = float(gaps[row, step])
    if gap > tolerance:
      raise AssertionError(
        f"row {row}: cached and recomputed greedy tokens part at step {step} with a top-2 logit "
        f"gap of {gap:.3g} > {tolerance} (cached {ids[step : step + 4]}..., "
        f"recomputed {reference[step : step + 4]}...)"
      )
    parted += 1
  return parted


def benchmark(config, dtype: str, batch: int, new_tokens: int, steps: int, repeats: int) -> dict:
  """Runs every measurement; returns the figures (seconds are medians over `repeats`)."""
  with tempfile.TemporaryDirectory() as tokenizer_dir:
    model_config, params, vae_params, tokenizer, spec = random_setup(
      config, dtype, 0, tokenizer_dir
    )
  images = np.random.default_rng(0).random((batch, spec.vae_image_size, spec.vae_image_size))
  images = images.astype(np.float32)
  instructions = [INSTRUCTION] * batch
  settings = InferenceSettings(
    decode=DecodeSettings(max_new_tokens=new_tokens), sampler=SamplerSettings(num_timesteps=steps)
  )
  timed = lambda fn: median_seconds(fn, warmup=1, iters=repeats)
  engine = AssessRestore(model_config, params, vae_params, tokenizer, spec, settings)

  # 1. Description decoding: cached engine vs full recomputation per token.
  cached = engine(images, instructions, restore=False)
  lengths = [len(ids) for ids in cached.description_ids]
  recompute = RecomputedGreedy(engine, new_tokens)
  tokens, gaps = recompute(images, instructions)
  parted = check_same_tokens(
    cached.description_ids,
    np.asarray(tokens),
    np.asarray(gaps),
    engine.special["im_end"],
    TIE_TOLERANCE[dtype],
  )
  decode_cached = timed(lambda: engine(images, instructions, restore=False))
  decode_uncached = timed(lambda: recompute(images, instructions))

  # 2. Restoration with a given description: prefix cache vs recomputation at every step.
  given = dataclasses.replace(settings, description_mode="given")
  restorers = {
    flag: AssessRestore(
      model_config,
      params,
      vae_params,
      tokenizer,
      spec,
      dataclasses.replace(given, use_prefix_cache=flag),
    )
    for flag in (True, False)
  }
  descriptions = [DESCRIPTION] * batch
  outputs = {flag: r(images, instructions, descriptions).restored for flag, r in restorers.items()}
  restore_s = {
    flag: timed(lambda r=r: r(images, instructions, descriptions)) for flag, r in restorers.items()
  }

  # 3. The full assess-then-restore (generated description, prefix cache).
  full_s = timed(lambda: engine(images, instructions))
  return dict(
    size=model_config.size,
    dtype=dtype,
    backend=jax.default_backend(),
    batch=batch,
    lengths=lengths,
    truncated=int(np.sum(cached.truncated)),
    rows_parted_at_near_tie=parted,
    decode_cached_s=decode_cached,
    decode_uncached_s=decode_uncached,
    description_tokens=len(engine._encode_text(DESCRIPTION)),
    restore_cached_s=restore_s[True],
    restore_uncached_s=restore_s[False],
    restore_max_abs_diff=float(np.abs(outputs[True] - outputs[False]).max()),
    full_s=full_s,
    images_per_s=batch / full_s,
    steps=steps,
    new_tokens=new_tokens,
  )


def report(r: dict) -> None:
  print(
    f"size={r['size']} dtype={r['dtype']} backend={r['backend']} batch={r['batch']} "
    f"(random weights; compile excluded; median of the repeats)"
  )
  print(
    f"decoded lengths {r['lengths']} (max {r['new_tokens']}; {r['truncated']} rows hit it); "
    f"rows whose greedy tokens part at a near tie: {r['rows_parted_at_near_tie']}"
  )
  decode_speedup = r["decode_uncached_s"] / r["decode_cached_s"]
  restore_speedup = r["restore_uncached_s"] / r["restore_cached_s"]
  print_table(
    ["measurement", "cached s", "uncached s", "speedup", "notes"],
    [
      [
        f"assess: {r['new_tokens']} description tokens",
        r["decode_cached_s"],
        r["decode_uncached_s"],
        decode_speedup,
        "KV cache vs whole sequence per token",
      ],
      [
        f"restore: {r['steps']} steps, guided",
        r["restore_cached_s"],
        r["restore_uncached_s"],
        restore_speedup,
        f"prefix cache vs recompute; {r['description_tokens']}-token given description; "
        f"max |diff| {r['restore_max_abs_diff']:.2g}",
      ],
      [
        "assess-then-restore",
        r["full_s"],
        "",
        "",
        f"{r['images_per_s']:.3g} images/s",
      ],
    ],
  )
  print(f"decode_cached_speedup={decode_speedup:.2f}")
  print(f"restore_prefix_cache_speedup={restore_speedup:.2f}")


def main(argv):
  del argv
  config = _CONFIG.value
  if _SIZE.value:
    if flags.FLAGS["config"].present:
      raise app.UsageError("--size is shorthand for --config=...:size=SIZE; give one of the two")
    from configs import medq_uni

    config = medq_uni.get_config(f"size={_SIZE.value},stage=2")
  report(
    benchmark(config, _DTYPE.value, _BATCH.value, _NEW_TOKENS.value, _STEPS.value, _REPEATS.value)
  )


def run_main():
  cli.run(main)


if __name__ == "__main__":
  run_main()
