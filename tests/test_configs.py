"""Every config loads; overrides are typed and unknown keys fail naming the key."""

import glob
import importlib.util
import os
import pathlib

import pytest
from absl import flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(
  p
  for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True)
  if not os.path.basename(p).startswith("_") and "def get_config" in pathlib.Path(p).read_text()
)


def _load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_config_loads(path):
  config = _load(path).get_config()
  assert config.to_dict()


@pytest.mark.parametrize("size", ["tiny", "small", "base", "unimedvl_7b"])
@pytest.mark.parametrize("scope", ["ffn", "all"])
def test_medq_uni_sizes(size, scope):
  from configs import medq_uni

  config = medq_uni.get_config(f"size={size},scope={scope},stage=2")
  assert config.model.expert_scope == scope
  assert config.model.llm.hidden_size % config.model.llm.num_heads == 0
  assert config.train.lambda_iqa == 0.25


def test_unimedvl_7b_matches_anchor():
  import json

  from configs import medq_uni

  anchors = os.path.join(ROOT, "..", "shared", "anchors")
  path = os.path.join(anchors, "bagel7b_mot_llm_config__from_MedQ-Uni.json")
  if not os.path.exists(path):
    pytest.skip("shared/anchors not beside the checkout")
  anchor = json.loads(pathlib.Path(path).read_text())
  llm = medq_uni.get_config("size=unimedvl_7b,scope=all").model.llm
  assert (
    llm.hidden_size,
    llm.intermediate_size,
    llm.num_layers,
    llm.num_heads,
    llm.num_kv_heads,
    llm.vocab_size,
    llm.rope_theta,
    llm.qk_norm,
  ) == (
    anchor["hidden_size"],
    anchor["intermediate_size"],
    anchor["num_hidden_layers"],
    anchor["num_attention_heads"],
    anchor["num_key_value_heads"],
    anchor["vocab_size"],
    anchor["rope_theta"],
    anchor["qk_norm"],
  )


def _parse(argv):
  values = flags.FlagValues()
  config_flags.DEFINE_config_file(
    "config", None, "config file", flag_values=values, lock_config=True, sys_argv=["prog"] + argv
  )
  values(["prog"] + argv)
  return values.config


def test_override_is_applied_and_typed():
  path = os.path.join(ROOT, "configs", "medq_uni.py")
  config = _parse(
    [
      f"--config={path}:size=tiny,stage=2",
      "--config.model.llm.num_layers=4",
      "--config.train.learning_rate=0.5",
    ]
  )
  assert config.model.llm.num_layers == 4 and config.train.learning_rate == 0.5
  assert config.train.stage == 2


def test_unknown_override_key_names_the_key():
  path = os.path.join(ROOT, "configs", "medq_uni.py")
  with pytest.raises(Exception, match="num_layerz"):
    _parse([f"--config={path}", "--config.model.llm.num_layerz=4"])


def test_wrongly_typed_override_names_the_key():
  path = os.path.join(ROOT, "configs", "medq_uni.py")
  with pytest.raises(Exception, match="num_layers"):
    _parse([f"--config={path}", "--config.model.llm.num_layers=four"])


@pytest.mark.parametrize(
  "arg,match",
  [
    ("size=huge", "unknown size"),
    ("stage=3", "stage"),
    ("colour=red", "unknown option 'colour'"),
    ("stage=two", "expects an int"),
  ],
)
def test_bad_config_arg_fails_naming_the_option(arg, match):
  from configs import medq_uni

  with pytest.raises(ValueError, match=match):
    medq_uni.get_config(arg)
