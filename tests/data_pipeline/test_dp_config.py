"""A wrong config fails before any work, naming the field."""

import os

import pytest

from data_pipeline import config_check, precompute
from dp_testlib import load_config


@pytest.mark.parametrize(
  "mutate,field",
  [
    (lambda c: setattr(c, "tasks", ("ldct", "deblur")), "config.tasks"),
    (lambda c: setattr(c, "severities", ("mild", "extreme")), "config.severities"),
    (lambda c: setattr(c, "source", "ixi"), "config.paths.ixi"),
    (
      lambda c: (
        setattr(c.paths, "aapm_mayo", "/nonexistent/mayo") or setattr(c, "source", "aapm_mayo")
      ),
      "config.paths.aapm_mayo",
    ),
    (lambda c: setattr(c.ldct, "photons", (1e4, 1e3)), "config.ldct.photons"),
    (lambda c: setattr(c.mri_noise, "sigma", (0.1, -0.2, 0.3)), "config.mri_noise.sigma"),
    (lambda c: setattr(c, "source", "kaggle"), "config.source"),
    (lambda c: c.split_fractions.update({"train": 0.5}), "config.split_fractions"),
    (lambda c: c.modality_tasks.update({"CT": ("denoise",)}), "config.modality_tasks.CT"),
    # Per-task parameter sub-configs, validated from the registry.
    (lambda c: c.ldct.update({"photonz": 3.0}), "config.ldct.photonz: unknown parameter"),
    (
      lambda c: c.pet_lowcount.update({"dose_reduction": ("4", "20", "100")}),
      "config.pet_lowcount.dose_reduction: expected numbers",
    ),
    (
      lambda c: setattr(c.mri_undersampling, "center_fraction", (0.16, 0.08, 0.3)),
      "config.mri_undersampling.center_fraction: the centre must be smaller",
    ),
    (lambda c: setattr(c.mri_noise, "model", "gaussian"), "config.mri_noise.model"),
    (lambda c: c.__delattr__("mri_motion"), "config.mri_motion: missing"),
    (lambda c: c.mri_motion.__delattr__("degrees"), "config.mri_motion.degrees: missing"),
    (
      lambda c: setattr(c.quality_label_by_severity, "severe", "bad"),
      "config.quality_label_by_severity.severe",
    ),
  ],
)
def test_bad_config_fails_before_work_naming_field(tmp_path, mutate, field):
  config = load_config()
  config.data_dir = str(tmp_path / "out")
  mutate(config)
  with pytest.raises(config_check.ConfigError, match=field.replace(".", r"\.")):
    precompute.run_precompute(config)
  assert not os.path.exists(config.data_dir)  # Nothing was started.


def test_default_configs_are_valid():
  for arg in (None, "runlocal", "image_size=128", "runlocal=false,source=medq-sample"):
    config_check.validate_config(load_config(arg))
  assert load_config("image_size=128").image_size == 128


def test_config_arg_is_typed():
  default, off, on = load_config(None), load_config("runlocal=false"), load_config("runlocal")
  assert off.image_size == default.image_size == 64 and on.image_size == 32
  assert off.ldct.num_angles == 180 and on.ldct.num_angles == 60
  assert load_config("runlocal=true,image_size=48").image_size == 48


@pytest.mark.parametrize(
  "arg,message",
  [
    (
      "runlocl",
      r"unknown option 'runlocl'; known options: \['image_size', 'runlocal', "
      r"'source'\]",
    ),
    ("imagesize=128", "unknown option 'imagesize'"),
    ("image_size=big", "option 'image_size' expects an int, got 'big'"),
    ("runlocal=maybe", "option 'runlocal' expects a boolean, got 'maybe'"),
    ("image_size", r"option 'image_size' needs a value"),
  ],
)
def test_bad_config_arg_names_the_option(arg, message):
  with pytest.raises(ValueError, match=message):
    load_config(arg)


def test_resume_with_a_different_config_is_refused(small_config):
  small_config.max_slices_per_volume = 1
  precompute.run_precompute(small_config)
  small_config.seed = 1
  with pytest.raises(ValueError, match=r"config\.data_dir: .* different config"):
    precompute.run_precompute(small_config)
