"""Stage 0 (medq_jax/train/vae_stage.py, launch/train_vae.py): the command trains the tiny VAE on
the built-in data to a stated PSNR, is idempotent and deterministic; its ae.safetensors loads
through the FLUX path bit-identically; the shipped weights reconstruct val images; a file with a
missing key fails naming the key and the file."""

import json
import os

import jax
import numpy as np
import pytest
from absl import flags
from safetensors.numpy import load_file, save_file

from configs import vae_stage0
from medq_jax import assets, checkpoints
from medq_jax.metrics import psnr
from medq_jax.train import vae_stage

flags.FLAGS.mark_as_parsed()  # Grain workers of the precompute read absl flags.

# Measured on this file's data (2 slices per volume, 32 px), docs/vae.md:
SHORT_STEPS = 40  # the stage-0 command for 40 steps: 19.55 dB val PSNR (20.4 dB at 80)
SHORT_MIN_PSNR = 18.5
HELD_OUT_SOURCE = "pydicom:CT_small"  # in val here and in the shipped VAE's val split
SHIPPED_MIN_PSNR = 30.5  # the shipped tiny VAE on those `high` images: 32.2 dB


def _config(data_dir, **train):
  config = vae_stage0.get_config("size=tiny")
  with config.unlocked():
    config.data.data_dir = data_dir
    config.data.max_slices_per_volume = 2
    config.data.ldct.num_angles = 30
    config.data.num_workers = 0
    config.vae_train.update(train)
  return config


def _short(data_dir, **overrides):
  train = dict(steps=SHORT_STEPS, warmup_steps=4, log_every=10, eval_every=SHORT_STEPS)
  return _config(data_dir, **dict(train, **overrides))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  from launch.prepare import ensure_dataset

  directory = str(tmp_path_factory.mktemp("data"))
  ensure_dataset(_config(directory).data)
  return directory


@pytest.fixture(scope="module")
def short_run(data_dir, tmp_path_factory):
  from launch import jobs

  workdir = str(tmp_path_factory.mktemp("vae_run"))
  return workdir, jobs.run_vae_stage(_short(data_dir), workdir, command="test")


def test_command_reaches_stated_psnr_and_is_idempotent(data_dir, short_run):
  from launch import jobs

  workdir, result = short_run
  assert result["psnr_mean"] >= SHORT_MIN_PSNR, result
  assert result["n"] > 0 and not result["reused"]
  with open(result["log_path"]) as f:
    log = json.load(f)
  assert log["steps"] == SHORT_STEPS and log["command"] == "test"
  assert [p["step"] for p in log["curve"]] == list(range(10, SHORT_STEPS + 1, 10))
  assert log["final_eval"]["psnr_mean"] == result["psnr_mean"]
  assert log["encoding"] == {"train": "posterior sample", "eval": "posterior mean"}
  # The same command again returns the finished run untouched; another config refuses the dir.
  before = os.path.getmtime(result["path"])
  again = jobs.run_vae_stage(_short(data_dir), workdir)
  assert again["reused"] and again["psnr_mean"] == result["psnr_mean"]
  assert os.path.getmtime(result["path"]) == before
  with pytest.raises(ValueError, match="another config"):
    jobs.run_vae_stage(_short(data_dir, seed=1), workdir)


def test_rerun_writes_identical_weights(data_dir, short_run, tmp_path):
  """The same command in a fresh directory writes bit-identical tensors (deterministic)."""
  _, result = short_run
  again = vae_stage.train_vae(_short(data_dir), str(tmp_path / "again"))
  first, second = load_file(result["path"]), load_file(again["path"])
  assert sorted(first) == sorted(second)
  for key, value in first.items():
    np.testing.assert_array_equal(value, second[key], err_msg=key)
  assert again["psnr_mean"] == result["psnr_mean"]


def test_written_weights_roundtrip_through_flux_loading_bit_identically(tmp_path):
  from ml_collections import ConfigDict

  from medq_jax.train import pretrained

  config = vae_stage0.get_config("size=tiny")
  params = vae_stage.init_vae_params(config.model.vae, jax.random.key(3))
  path = vae_stage.save_vae_params(params, str(tmp_path / "ae.safetensors"))
  loaded = vae_stage.load_vae_params(path, config.model)
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(params))
  # The training path (config.init.flux_ae) reads the same file into the same arrays.
  init = ConfigDict(dict(bagel_ema="", qwen2="", siglip="", flux_ae=path))
  fresh = vae_stage.init_vae_params(config.model.vae, jax.random.key(4))
  _, vae_params = pretrained.load_initial_weights(init, config.model, {}, fresh)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(vae_params), loaded)
  # Written again from the loaded params: the same tensors under the same FLUX names.
  again = vae_stage.save_vae_params(loaded, str(tmp_path / "again.safetensors"))
  first, second = load_file(path), load_file(again)
  assert sorted(first) == sorted(second) and "encoder.down.0.block.0.conv1.weight" in first
  for key in first:
    np.testing.assert_array_equal(first[key], second[key], err_msg=key)


def test_missing_key_fails_naming_key_and_file(tmp_path):
  config = vae_stage0.get_config("size=tiny")
  params = vae_stage.init_vae_params(config.model.vae, jax.random.key(0))
  path = vae_stage.save_vae_params(params, str(tmp_path / "ae.safetensors"))
  tensors = load_file(path)
  del tensors["decoder.mid.attn_1.q.weight"]
  broken = str(tmp_path / "broken.safetensors")
  save_file(tensors, broken)
  with pytest.raises(checkpoints.CheckpointError) as error:
    vae_stage.load_vae_params(broken, config.model)
  message = str(error.value)
  assert broken in message and "decoder.mid.attn_1.q.weight" in message
  assert "decoder/mid/attn_1/q/kernel" in message
  with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
    vae_stage.load_vae_params(str(tmp_path / "nowhere.safetensors"), config.model)


def test_shipped_tiny_vae_reconstructs_val_images(data_dir):
  """The shipped tiny VAE on this data's val split: evaluate_vae agrees with PSNR recomputed in
  NumPy from the public encode (posterior mean) / decode, and the slices the shipped VAE never
  saw (CT_small, held out of its training split too) come back above the stated PSNR."""
  from data_pipeline import loader
  from medq_jax.models.vae import FluxAutoEncoder

  config = _config(data_dir)
  params = vae_stage.load_vae_params(assets.builtin_vae_path("tiny"), config.model)
  report = vae_stage.evaluate_vae(params, config.model, config.data, "val", fields=("high",))
  model = FluxAutoEncoder(config.model.vae)
  values, held_out = [], []
  batches = loader.make_loader(
    config.data, "val", worker_count=0, batch_size=64, num_epochs=1, shuffle=False,
    shard_index=0, shard_count=1, drop_remainder=False,
  )  # fmt: skip
  for batch in batches:
    images = vae_stage.to_rgb_batch(batch["high"])
    latents = model.apply({"params": params}, images, method=FluxAutoEncoder.encode)
    decoded = np.asarray(model.apply({"params": params}, latents, method=FluxAutoEncoder.decode))
    grey = np.clip((decoded.mean(-1) + 1) / 2, 0, 1).astype(np.float64)
    mse = ((grey - batch["high"].astype(np.float64)) ** 2).mean(axis=(1, 2))
    values += list(10 * np.log10(1 / mse))
    held_out += [str(i).startswith(HELD_OUT_SOURCE) for i in batch["id"]]
  assert report["n"] == len(values) and any(held_out)
  np.testing.assert_allclose(report["psnr_mean"], np.mean(values), atol=1e-3)
  np.testing.assert_allclose(report["psnr_std"], np.std(values), atol=1e-3)
  assert np.mean(np.array(values)[held_out]) >= SHIPPED_MIN_PSNR, values
  with open(assets.builtin_vae_log_path("tiny")) as f:
    log = json.load(f)
  assert log["size"] == "tiny" and log["final_eval"]["psnr_mean"] > 25.0
  assert log["config"]["vae"]["ch_mult"] == list(config.model.vae.ch_mult)


def test_builtin_vae_path_names_sizes():
  assert assets.builtin_vae_path("small").endswith(os.path.join("vae", "small.safetensors"))
  with pytest.raises(ValueError, match="'base'.*tiny"):
    assets.builtin_vae_path("base")


def test_psnr_reference():
  """The PSNR used above is 10 log10(1 / MSE) (data range 1)."""
  x = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 8, 8)
  y = x + 0.01
  assert float(psnr(x, y)[0]) == pytest.approx(40.0, abs=1e-3)
