"""Helpers for the data_pipeline tests (imported by basename: pytest puts this folder on sys.path)."""

import importlib.util
import os

_CONFIG_PATH = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "data", "medq_sample.py"
)


def load_config(arg="runlocal"):
  """configs/data/medq_sample.py:get_config(arg), loaded by path (configs/ is a plain folder)."""
  spec = importlib.util.spec_from_file_location("medq_sample_config", _CONFIG_PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
