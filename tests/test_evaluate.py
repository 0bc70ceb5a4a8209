"""medq-evaluate end to end on a tiny trained checkpoint and on the same weights converted to
BAGEL names: every report file is written, both sources restore identically, and bad inputs
fail with errors naming the file or field."""

import json
import os
import shutil

import numpy as np
import pytest

from configs import inference, medq_uni
from medq_jax import checkpoints


def _config(data_dir, vae_path, size="tiny"):
  config = medq_uni.get_config(f"size={size},stage=2")
  with config.unlocked():
    config.data.data_dir = data_dir
    config.data.max_slices_per_volume = 2
    config.data.ldct.num_angles = 30
    config.data.num_workers = 0
    config.train.steps = 1
    config.train.batch_size = 8
    config.init.flux_ae = vae_path
    config.infer = inference.infer_config(max_new_tokens=6)
    config.infer.num_timesteps = 3
    config.evaluate = inference.evaluate_config()
    config.evaluate.batch_size = 2
    config.evaluate.max_examples = 3
    config.evaluate.panel_count = 2
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(config, workdir): a 1-step tiny run with a random VAE written as ae.safetensors."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from launch.jobs import run_training
  from medq_jax.convert.core import export_params, save_safetensors
  from medq_jax.convert.flux_vae import flux_vae_rules
  from medq_jax.models.vae import FluxAutoEncoder

  root = tmp_path_factory.mktemp("eval")
  model_config = medq_uni.get_config("size=tiny").model
  vae = FluxAutoEncoder(model_config.vae)
  vae_params = nn.unbox(vae.init(jax.random.key(3), jnp.zeros((1, 32, 32, 3)))["params"])
  vae_path = str(root / "ae.safetensors")
  save_safetensors(export_params(vae_params, flux_vae_rules()), vae_path)
  config = _config(str(root / "data"), vae_path)
  workdir = str(root / "run")
  run_training(config, workdir)
  return config, workdir


def _restored(paths):
  with open(paths["json"]) as handle:
    payload = json.load(handle)
  return {case["id"]: case for case in payload["cases"]}


def test_evaluate_writes_every_report_file(trained, tmp_path):
  from launch.restoration_eval import run_evaluation

  config, workdir = trained
  paths = run_evaluation(config, workdir, str(tmp_path / "report"), say=lambda _: None)
  for key in ("markdown", "json"):
    assert os.path.getsize(paths[key]) > 0
  with open(paths["markdown"]) as handle:
    report = handle.read()
  assert "identity" in report.lower() and "n=" in report
  assert any(key.startswith("panel_") for key in paths)
  csv_files = [p for p in paths.values() if p.endswith(".csv")]
  assert csv_files and all(os.path.getsize(p) > 0 for p in csv_files)
  assert len(_restored(paths)) == 3


def test_converted_bagel_directory_restores_identically(trained, tmp_path):
  """The same weights exported to BAGEL/FLUX names (ema.safetensors + ae.safetensors + the
  tokenizer) give the same restorations as the Orbax checkpoint."""
  from launch.restoration_eval import run_evaluation
  from medq_jax.convert.bagel import export_bagel

  config, workdir = trained
  params, _ = checkpoints.restore_params(workdir, config.model)
  vae_params = checkpoints.load_vae_params(config.init.flux_ae, config.model)
  converted = tmp_path / "converted"
  converted.mkdir()
  export_bagel(
    config.model,
    params,
    vae_params,
    str(converted / "ema.safetensors"),
    str(converted / "ae.safetensors"),
  )
  tokenizer_dir = checkpoints.run_tokenizer_dir(workdir, config.layout)
  for name in os.listdir(tokenizer_dir):
    shutil.copy(os.path.join(tokenizer_dir, name), converted / name)
  from_run = _restored(run_evaluation(config, workdir, str(tmp_path / "a"), say=lambda _: None))
  from_converted = _restored(
    run_evaluation(config, str(converted), str(tmp_path / "b"), say=lambda _: None)
  )
  assert from_run.keys() == from_converted.keys()
  for case_id, case in from_run.items():
    assert case["description"] == from_converted[case_id]["description"]
    np.testing.assert_allclose(
      case["metrics"]["model"]["psnr"],
      from_converted[case_id]["metrics"]["model"]["psnr"],
      rtol=1e-5,
    )


def test_checkpoint_of_another_size_fails_naming_it(trained):
  from medq_jax.infer.loading import load_for_inference

  config, workdir = trained
  other = _config(config.data.data_dir, config.init.flux_ae, size="small")
  with pytest.raises(checkpoints.CheckpointError, match="another size or expert scope"):
    load_for_inference(other, workdir)


def test_vae_file_with_missing_keys_fails_naming_the_file(trained, tmp_path):
  from safetensors.numpy import load_file, save_file

  config, _ = trained
  tensors = load_file(config.init.flux_ae)
  dropped = sorted(tensors)[0]
  del tensors[dropped]
  broken = str(tmp_path / "ae.safetensors")
  save_file(tensors, broken)
  with pytest.raises(checkpoints.CheckpointError, match=r"ae\.safetensors") as error:
    checkpoints.load_vae_params(broken, config.model)
  assert "missing" in str(error.value)  # names the parameter the file lacks


def test_missing_split_and_missing_run_fail_clearly(trained, tmp_path):
  from launch.restoration_eval import run_evaluation
  from medq_jax.infer.loading import load_for_inference

  config, workdir = trained
  with pytest.raises(FileNotFoundError, match="no such directory"):
    load_for_inference(config, str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(checkpoints.CheckpointError, match="no checkpoints"):
    load_for_inference(config, str(tmp_path / "empty"))
  bad = config.copy_and_resolve_references()
  with bad.unlocked():
    bad.evaluate.split = "holdout"
  with pytest.raises(ValueError, match="holdout"):
    run_evaluation(bad, workdir, str(tmp_path / "r"), say=lambda _: None)


def test_images_out_of_range_are_refused():
  from medq_jax.infer.assess_restore import grey_to_model_rgb

  good = np.full((2, 32, 32), 0.5, np.float32)
  bad = good.copy()
  bad[1, 0, 0] = 255.0
  with pytest.raises(ValueError, match=r"images\[1\].*expected \[0, 1\]"):
    grey_to_model_rgb(bad, 32)
  with pytest.raises(ValueError, match="grey"):
    grey_to_model_rgb(good[0], 32)
