"""Shared fixtures: a small data config and one medq-sample precompute per test session."""

import os
import sys

import pytest
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # For dp_testlib.
from dp_testlib import load_config  # pylint: disable=g-import-not-at-top

flags.FLAGS.mark_as_parsed()  # Grain worker processes need parsed absl flags.


@pytest.fixture
def small_config(tmp_path):
  """32 px, 2 slices per volume, 8 examples per shard, 30 radon angles."""
  config = load_config("runlocal")
  config.data_dir = str(tmp_path / "data")
  config.max_slices_per_volume = 2
  config.examples_per_shard = 8
  config.ldct.num_angles = 30
  config.num_workers = 0
  return config


@pytest.fixture(scope="session")
def built_sample(tmp_path_factory):
  """medq-sample precomputed once (2 Grain workers); returns (config, manifest)."""
  from data_pipeline import precompute

  config = load_config("runlocal")
  config.data_dir = str(tmp_path_factory.mktemp("medq") / "data")
  config.max_slices_per_volume = 2
  config.examples_per_shard = 8
  config.ldct.num_angles = 30
  config.num_workers = 2
  config.batch_size = 4
  manifest = precompute.run_precompute(config)
  return config, manifest
