"""Fixtures shared by the engine tests: one tiny precomputed built-in dataset per session."""

import importlib.util
import os

import pytest
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_data_config(data_dir: str):
  """The runlocal medq-sample data config at 32 px, 2 slices per volume, in `data_dir` (loaded
  from its file: configs/ is not a package the tests import by name)."""
  spec = importlib.util.spec_from_file_location(
    "medq_sample_config", os.path.join(REPO, "configs", "data", "medq_sample.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("runlocal")
  config.data_dir = data_dir
  config.max_slices_per_volume = 2
  config.examples_per_shard = 8
  config.ldct.num_angles = 30
  config.num_workers = 0
  return config


@pytest.fixture(scope="session")
def tiny_data_config_session(tmp_path_factory):
  """`tiny_data_config` precomputed once for the whole session (about 5 s). Tests must not
  write into its data_dir."""
  from data_pipeline import precompute

  flags.FLAGS.mark_as_parsed()
  config = tiny_data_config(str(tmp_path_factory.mktemp("engine_data") / "data"))
  precompute.run_precompute(config)
  return config
