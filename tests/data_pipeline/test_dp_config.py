"""A wrong config fails before any work, naming the field."""

import os

import pytest

from data_pipeline import config_check
from data_pipeline import precompute
from dp_testlib import load_config


@pytest.mark.parametrize("mutate,field", [
    (lambda c: setattr(c, "tasks", ("ldct", "deblur")), "config.tasks"),
    (lambda c: setattr(c, "severities", ("mild", "extreme")), "config.severities"),
    (lambda c: setattr(c, "source", "ixi"), "config.paths.ixi"),
    (lambda c: setattr(c.paths, "aapm_mayo", "/nonexistent/mayo") or
     setattr(c, "source", "aapm_mayo"), "config.paths.aapm_mayo"),
    (lambda c: setattr(c.ldct, "photons", (1e4, 1e3)), "config.ldct.photons"),
    (lambda c: setattr(c.mri_noise, "sigma", (0.1, -0.2, 0.3)), "config.mri_noise.sigma"),
    (lambda c: setattr(c, "source", "kaggle"), "config.source"),
    (lambda c: c.split_fractions.update({"train": 0.5}), "config.split_fractions"),
    (lambda c: c.modality_tasks.update({"CT": ("denoise",)}), "config.modality_tasks.CT"),
])
def test_bad_config_fails_before_work_naming_field(tmp_path, mutate, field):
  config = load_config()
  config.data_dir = str(tmp_path / "out")
  mutate(config)
  with pytest.raises(config_check.ConfigError, match=field.replace(".", r"\.")):
    precompute.run_precompute(config)
  assert not os.path.exists(config.data_dir)  # Nothing was started.


def test_default_configs_are_valid():
  for arg in (None, "runlocal", "image_size=128"):
    config_check.validate_config(load_config(arg))
  assert load_config("image_size=128").image_size == 128


def test_resume_with_a_different_config_is_refused(small_config):
  small_config.max_slices_per_volume = 1
  precompute.run_precompute(small_config)
  small_config.seed = 1
  with pytest.raises(ValueError, match=r"config\.data_dir: .* different config"):
    precompute.run_precompute(small_config)
