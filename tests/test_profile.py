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


def test_flops_counted_two_ways_agree(profile_and_config):
  """XLA's cost analysis of the compiled step and the analytic count from the shapes are
  independent; on tiny stage 2 they must agree within 25%."""
  profile, _, _ = profile_and_config
  assert profile.xla_flops > 0
  assert abs(profile.analytic_flops / profile.xla_flops - 1) < 0.25


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
