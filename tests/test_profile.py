"""medq-profile: the real step on the trainer's batches, its FLOPs counted two ways, its parts."""

import os

import pytest

from configs import medq_uni


@pytest.fixture(scope="module")
def profile_and_config(tmp_path_factory):
  from launch import prepare
  from medq_jax.train.profiling import profile_training

  root = tmp_path_factory.mktemp("profile")
  config = medq_uni.get_config("size=tiny,stage=2,mesh=1x-1x1")
  with config.unlocked():
    config.data.data_dir = str(root / "data")
    config.data.max_slices_per_volume = 2
    config.data.ldct.num_angles = 30
    config.data.num_workers = 0
  tokenizer_dir = prepare.prepare_training(config, str(root / "run"))
  trace_dir = str(root / "trace")
  profile = profile_training(
    config, tokenizer_dir, steps=2, warmup=1, trace_dir=trace_dir, part_iters=1, say=lambda _: 0
  )
  return profile, config, tokenizer_dir


def test_flops_count_every_layer_and_exceed_the_matmul_count(profile_and_config):
  """The step's FLOPs are XLA's count with the layers unrolled: a scanned step's own cost
  analysis counts one layer of each stack, so it must be the smaller; the analytic count
  (decoder, ViT, LM head matmuls only) is a subset of XLA's (which adds the VAE, the pixel losses
  and elementwise work), within a factor of 2 on tiny stage 2."""
  import jax

  from medq_jax import sharding as sharding_lib
  from medq_jax.train import state as state_lib
  from medq_jax.train import step as step_lib
  from medq_jax.train.profiling import synthetic_batches

  profile, config, tokenizer_dir = profile_and_config
  assert profile.analytic_flops < profile.xla_flops < 2 * profile.analytic_flops
  config = config.copy_and_resolve_references()
  config.model.scan_unroll = False  # a rolled layer loop, which XLA's analysis counts once
  setup = state_lib.build_setup(config, jax.random.key(0))
  state = state_lib.create_train_state(setup.params, setup.optimizer)
  step = step_lib.make_train_step(
    setup.model, setup.vae, setup.optimizer, config.model, config.train
  )
  batch = next(synthetic_batches(config, tokenizer_dir, setup.spec))
  with sharding_lib.mesh_context(setup.mesh, config.sharding_rules):
    lowered = jax.jit(step).lower(state, setup.vae_params, batch, jax.random.key(0))
  scanned = lowered.cost_analysis()
  scanned = scanned[0] if isinstance(scanned, (list, tuple)) else scanned
  assert config.model.scan_layers and scanned["flops"] < 0.9 * profile.xla_flops


def test_analytic_decoder_count_equals_xlas(profile_and_config):
  """The analytic decoder count against XLA's count of the decoder alone (forward, unrolled):
  two independent counts of the same matmuls; XLA adds norms, RoPE and softmax (5% at tiny's
  width), so it may exceed the analytic count by less than 8%."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from medq_jax.models.attention import TokenIds
  from medq_jax.models.decoder import MoTDecoder
  from medq_jax.train.profiling import analytic_decoder_flops

  _, config, _ = profile_and_config
  llm, rows, und_len, gen_len = config.model.llm, 2, 48, 16
  decoder = MoTDecoder(llm, "ffn", scan_layers=False)

  def ids(length, offset):
    order = jnp.broadcast_to(jnp.arange(offset, offset + length), (rows, length))
    zeros = jnp.zeros((rows, length), jnp.int32)
    return TokenIds(zeros, zeros, zeros, order), order

  (und_ids, und_pos), (gen_ids, gen_pos) = ids(und_len, 0), ids(gen_len, und_len)
  und_h = jnp.zeros((rows, und_len, llm.hidden_size))
  gen_h = jnp.zeros((rows, gen_len, llm.hidden_size))
  args = (und_h, gen_h, und_ids, gen_ids, und_pos, gen_pos)
  params = nn.unbox(jax.eval_shape(decoder.init, jax.random.key(0), *args))
  analysis = jax.jit(decoder.apply).lower(params, *args).cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  expected = analytic_decoder_flops(llm, rows, und_len, gen_len)
  assert expected <= analysis["flops"] < 1.08 * expected


def test_figures_are_consistent(profile_and_config, capsys):
  from medq_jax.train.profiling import print_profile

  profile, config, _ = profile_and_config
  assert profile.step_seconds > 0 and profile.peak_flops_per_second > 0
  assert profile.examples_per_second == pytest.approx(
    config.train.batch_size / profile.step_seconds
  )
  assert profile.mfu == pytest.approx(
    profile.xla_flops / profile.step_seconds / profile.peak_flops_per_second
  )
  assert 0 <= profile.data_wait_fraction < 1
  assert profile.real_tokens_per_second < profile.tokens_per_second
  parts = profile.parts
  assert parts["model forward (decoder, ViT, embeddings; VAE encode inside)"] > 0
  assert parts["optimizer update"] > 0
  assert any(files for _, _, files in os.walk(profile.trace_dir))
  print_profile(profile, config)
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[-1] == f"mfu={profile.mfu:.4f}"


def test_datasheet_mfu_printed_above_the_last_line(profile_and_config, capsys):
  import dataclasses

  from medq_jax.train.profiling import print_profile

  profile, config, _ = profile_and_config
  profile = dataclasses.replace(
    profile, datasheet_flops_per_second=2 * profile.peak_flops_per_second
  )
  assert profile.mfu_datasheet == pytest.approx(profile.mfu / 2)
  print_profile(profile, config)
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[-2:] == [f"mfu_datasheet={profile.mfu_datasheet:.4f}", f"mfu={profile.mfu:.4f}"]


def test_synthetic_rows_have_the_loaders_shapes(profile_and_config):
  """--batches=synthetic (a machine without the data stack) must feed the step exactly the
  loader's fields, shapes and dtypes, so the profiled program is the trained one; its rows are
  real packed rows (every example's tokens valid, the target noised)."""
  from medq_jax import layout as layout_lib
  from medq_jax.train import data as data_lib
  from medq_jax.train.profiling import synthetic_batches

  _, config, tokenizer_dir = profile_and_config
  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, config.train.stage)
  loader = data_lib.as_numpy_batch(next(data_lib.make_train_iterator(config, tokenizer_dir, spec)))
  synthetic = next(synthetic_batches(config, tokenizer_dir, spec))
  assert {k: (v.shape, v.dtype) for k, v in synthetic.items()} == {
    k: (v.shape, v.dtype) for k, v in loader.items()
  }
  assert (synthetic["und_sample_ids"][:, 0] == 0).all()
  assert synthetic["gen_noised"].any(axis=1).all()
  assert (synthetic["und_loss_mask"].sum(axis=1) > 10).all()  # the description's CE tokens


def test_model_flops_do_not_depend_on_loops_or_recomputation():
  """`step_flops` counts model FLOPs: the chunked attention (row and chunk loops, logits
  recomputed in its backward), gradient accumulation (a scan over micro-batches) and full remat
  give the count of the plain step; XLA's own count of those steps would be 1/k of it (loops
  counted once) or more (recomputation)."""
  import jax

  from medq_jax import layout as layout_lib
  from medq_jax.train.profiling import step_flops
  from medq_jax.types import latent_dim

  def flops(**changes):
    config = medq_uni.get_config("size=tiny,stage=2,mesh=1x1x1")
    for key, value in changes.items():
      node, leaf = key.split(".")
      config[node][leaf] = value
    spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, 2)
    batch = layout_lib.zeros_batch(spec, 4, latent_dim(config.model))
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
    return step_flops(config, batch)

  plain = flops(**{"model.attention_impl": "xla"})
  assert plain > 0
  for changes in (
    {"model.attention_impl": "chunked"},
    {"train.grad_accum_steps": 2},
    {"model.remat_policy": "full"},
  ):
    assert flops(**changes) == plain, changes
