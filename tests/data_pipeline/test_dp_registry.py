"""The degradation registry: discovery, and a new degradation as one file (the docs' example)."""

import dataclasses
import os
import re
import sys

import numpy as np
import pytest
from scipy import ndimage

from data_pipeline import config_check, degradations, demo_examples, descriptions, planning
from data_pipeline import example as example_lib
from data_pipeline.degradations import registry
from dp_testlib import load_config

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
_PACKAGE_DIR = os.path.join(_ROOT, "data_pipeline", "degradations")
_DOCS = os.path.join(_ROOT, "docs", "data_pipeline.md")


def test_discovery_finds_every_module():
  files = {
    name[:-3]
    for name in os.listdir(_PACKAGE_DIR)
    if name.endswith(".py") and name not in ("__init__.py", "registry.py")
  }
  assert set(registry.names()) == files
  for name in files:  # Each module registers the task of its own name.
    assert registry.get(name).simulate.__module__ == f"data_pipeline.degradations.{name}"
  assert registry.names()[:5] == (
    "ldct",
    "mri_undersampling",
    "mri_motion",
    "mri_noise",
    "pet_lowcount",
  )
  assert registry.names() == example_lib.TASKS


def test_unknown_task_names_the_registered_ones():
  with pytest.raises(ValueError, match=r"unknown task 'deblur'; registered degradations: .*ldct"):
    registry.get("deblur")


def test_definition_errors_name_the_degradation():
  ldct = registry.get("ldct")
  with pytest.raises(ValueError, match=r"'ldct_bad'.*per-severity field 'photons'"):
    registry.register(
      dataclasses.replace(ldct, name="ldct_bad", defaults=dict(ldct.defaults, photons=(1.0, 2.0)))
    )
  with pytest.raises(ValueError, match=r"'ldct_bad'.*unknown modality 'xray'"):
    registry.register(dataclasses.replace(ldct, name="ldct_bad", modalities=("xray",)))
  with pytest.raises(ValueError, match="registered twice"):
    registry.register(dataclasses.replace(ldct, name="mri_noise"))
  assert "ldct_bad" not in registry.names()


@pytest.mark.parametrize("task", registry.names())
def test_config_holds_each_registered_task(task):
  config = load_config()
  degradation = registry.get(task)
  assert task in config.tasks
  assert dict(config[task]) == degradation.default_params(runlocal=True)
  for modality in degradation.modalities:
    assert task in config.modality_tasks[modality]
  for severity in example_lib.SEVERITIES:
    params = degradation.params_at(config[task], severity)
    for field in degradation.per_severity:
      assert params[field] == config[task][field][example_lib.SEVERITIES.index(severity)]


def _worked_example_source():
  """The module of the docs' "Adding a degradation" section, exactly as printed there."""
  with open(_DOCS) as file:
    match = re.search(
      r"```python\n# data_pipeline/degradations/ct_blur\.py\n(.*?)```", file.read(), re.S
    )
  assert match, f"{_DOCS}: the ct_blur worked example is missing"
  return match.group(1)


@pytest.fixture
def new_degradation(tmp_path, monkeypatch):
  """The docs' ct_blur module written to a folder added to the package path (as if the file
  were put in data_pipeline/degradations/); unregistered afterwards."""
  assert "ct_blur" not in registry.names()
  (tmp_path / "ct_blur.py").write_text(_worked_example_source())
  monkeypatch.setattr(degradations, "__path__", [*degradations.__path__, str(tmp_path)])
  yield "ct_blur"
  registry.unregister("ct_blur")
  sys.modules.pop("data_pipeline.degradations.ct_blur", None)


def test_new_degradation_is_one_file(new_degradation):
  task = new_degradation
  # Discovery and config building.
  assert task in registry.names() and task in example_lib.TASKS
  config = load_config()
  assert config.tasks[-1] == task and task in config.modality_tasks.CT
  assert tuple(config.ct_blur.fwhm_mm) == (1.5, 3.0, 6.0)
  config_check.validate_config(config)
  # Validation from the registry, naming config.<task>.<field>.
  bad = load_config()
  bad.ct_blur.fwhm_mm = (1.0, 2.0)
  with pytest.raises(config_check.ConfigError, match=r"config\.ct_blur\.fwhm_mm: need one"):
    config_check.validate_config(bad)
  # degrade() against scipy directly: sigma = FWHM / 2.3548 / (250 mm / 32 px).
  image = np.random.default_rng(0).uniform(0.0, 1.0, (32, 32)).astype(np.float32)
  low, params = degradations.degrade(task, image, "severe", config, seed=5)
  expected = ndimage.gaussian_filter(image.astype(np.float64), 6.0 / 2.35482 / (250.0 / 32))
  np.testing.assert_allclose(low, np.clip(expected, 0, 1), atol=1e-4)
  assert params["task"] == task and params["severity"] == "severe" and params["seed"] == 5
  # Descriptions: its own wording, the default label rule.
  assert descriptions.quality_label("moderate", config, task) == "usable"
  meta = {
    "modality": "CT",
    "anatomy": "head",
    "task": task,
    "severity": "moderate",
    "quality_label": "usable",
  }
  texts = [descriptions.template_description(meta, seed) for seed in range(20)]
  degradation = registry.get(task)
  for text in texts:
    assert any(name in text for name in degradation.degradation_names), text
    assert any(cause in text for cause in degradation.causes), text
    assert text.endswith("Overall, the quality of this image is usable.")
  # Work planning gives CT slices the new task; the demo examples include it.
  items = planning.plan_items([{"key": "ct:0", "modality": "CT", "patient_id": "p0"}], config)
  assert {item["task"] for item in items} == {"ldct", task}
  examples = demo_examples.demo_examples(
    load_config("image_size=64,runlocal"), seed=1, severities=("severe",)
  )
  blurred = [example for example in examples if example["task"] == task]
  assert len(blurred) == 1 and blurred[0]["modality"] == "CT"
  example_lib.validate_example(blurred[0], 64)


def test_label_rule_of_a_degradation_is_used():
  """A module's own label rule reaches the example's label and its description."""
  strict = dataclasses.replace(
    registry.get("pet_lowcount"), name="pet_strict", label_rule=lambda severity, config: "reject"
  )
  registry.register(strict)
  try:
    config = load_config()
    config.tasks = ("pet_strict",)
    config_check.validate_config(config)
    assert descriptions.quality_label("mild", config, "pet_strict") == "reject"
    assert descriptions.quality_label("mild", config, "pet_lowcount") == "good"
    examples = demo_examples.demo_examples(config)
    assert [e["quality_label"] for e in examples] == ["reject"] * 3
    assert all(e["description"].endswith("quality of this image is reject.") for e in examples)
  finally:
    registry.unregister("pet_strict")
