"""A run's own tokenizer records what it was trained for (dataset and vocabulary size), and a
rerun that finds one trained for something else stops, naming both, instead of tokenizing every
text differently (medq-profile's synthetic tokenizer once sat where the loader run then reused it,
and 550 of the dataset's examples went over the description limit)."""

import json
import os

import pytest

from configs import medq_uni
from launch import prepare
from medq_jax import tokenizer as tokenizer_lib
from medq_jax.train import profiling

TEXTS = ["the image shows mild noise and slight blur", "restore the degraded ct slice"] * 20


@pytest.fixture
def config():
  return medq_uni.get_config("size=tiny,stage=2")


def _trained_dir(workdir, source=None):
  out_dir = os.path.join(workdir, "tokenizer")
  tokenizer_lib.train_bpe_tokenizer(TEXTS, 300, out_dir)
  if source is not None:
    with open(os.path.join(out_dir, prepare.TOKENIZER_SOURCE_FILE), "w") as handle:
      handle.write(source if isinstance(source, str) else json.dumps(source))
  return out_dir


def test_source_names_the_dataset_and_vocabulary(config):
  assert prepare.tokenizer_source(config) == {
    "dataset": f"{config.data.name}/{config.data.version}",
    "vocab_size": config.layout.tokenizer_vocab_size,
  }


def test_a_matching_tokenizer_is_reused_unchanged(tmp_path, config):
  out_dir = _trained_dir(str(tmp_path), prepare.tokenizer_source(config))
  before = os.stat(os.path.join(out_dir, "tokenizer.json")).st_mtime_ns
  assert prepare.ensure_tokenizer(config, str(tmp_path)) == out_dir
  assert os.stat(os.path.join(out_dir, "tokenizer.json")).st_mtime_ns == before


@pytest.mark.parametrize("field, value", [("vocab_size", 1024), ("dataset", "synthetic")])
def test_a_tokenizer_trained_for_something_else_stops_the_run(tmp_path, config, field, value):
  source = dict(prepare.tokenizer_source(config), **{field: value})
  out_dir = _trained_dir(str(tmp_path), source)
  with pytest.raises(ValueError) as error:
    prepare.ensure_tokenizer(config, str(tmp_path))
  message = str(error.value)
  assert message.startswith(f"{out_dir}: this run's tokenizer was trained for")
  assert repr(value) in message and "--config.layout.tokenizer_dir" in message


def test_an_unreadable_source_file_is_named(tmp_path, config):
  out_dir = _trained_dir(str(tmp_path), '{"vocab_size": 5')  # cut short
  with pytest.raises(ValueError, match=rf"{prepare.TOKENIZER_SOURCE_FILE}: unreadable"):
    prepare.ensure_tokenizer(config, str(tmp_path))
  assert os.path.exists(os.path.join(out_dir, "tokenizer.json"))


def test_a_tokenizer_without_a_source_file_is_taken_as_is(tmp_path, config):
  out_dir = _trained_dir(str(tmp_path))
  assert prepare.ensure_tokenizer(config, str(tmp_path)) == out_dir


def test_the_synthetic_profile_tokenizer_is_not_the_runs(tmp_path, config):
  synthetic = profiling.synthetic_tokenizer(config, str(tmp_path))
  assert synthetic == os.path.join(str(tmp_path), "synthetic_tokenizer")
  assert os.path.exists(os.path.join(synthetic, "tokenizer.json"))
  assert not os.path.exists(os.path.join(str(tmp_path), "tokenizer"))
