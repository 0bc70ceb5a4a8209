"""The one CLI convention (docs/cli.md), run as a user runs it: every entry point under launch/
answers --help with exit 0 and lists --config; a misspelt config key or a mistyped value fails
with one line naming the key (the valid keys read from the config file itself); --local_devices
reaches JAX from main(), after absl parsed the flags."""

import glob
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest
from ml_collections import config_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_POINTS = sorted(
  os.path.basename(path)[:-3]
  for path in glob.glob(os.path.join(ROOT, "launch", "*.py"))
  if 'if __name__ == "__main__":' in pathlib.Path(path).read_text()
)


def _run(args, env=None, timeout=300):
  return subprocess.run(
    [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
  )


def _entry(module, *args):
  return _run(["-m", f"launch.{module}", *args])


def _load_config(spec):
  """get_config(arg) of a config file spec "configs/x.py:arg", loaded without config_flags."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location(
    "config_under_test", os.path.join(ROOT, path)
  )
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _first_leaf(config, kind, prefix=""):
  """The dotted path and value of the first leaf of type `kind` (bool excluded for int)."""
  for key in sorted(config.keys()):
    value = config[key]
    if isinstance(value, config_dict.ConfigDict):
      found = _first_leaf(value, kind, f"{prefix}{key}.")
      if found:
        return found
    elif type(value) is kind:
      return f"{prefix}{key}", value
  return None


def _one_line_error(result):
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  return [line for line in result.stderr.splitlines() if line.startswith("FATAL")][0]


def test_every_entry_point_is_found():
  assert {
    "train",
    "bench",
    "precompute",
    "render_examples",
    "multihost_check",
    "loader_shard_check",
    "dump_param_shardings",
  } <= set(ENTRY_POINTS)


def _default_config(module):
  """--help of `module` exits 0 and names its --config default; returns that config's spec."""
  helped = _entry(module, "--help")
  assert helped.returncode == 0, helped.stderr[-3000:]
  default = re.search(r"--config: .*?\(default: '([^']*)'\)", helped.stdout, re.S)
  assert default, helped.stdout
  return default[1]


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help_and_misspelt_key(module):
  config = _load_config(_default_config(module))
  misspelt = _one_line_error(_entry(module, "--config.no_such_key=1"))
  assert (
    f"--config.no_such_key: config has no key 'no_such_key'; valid keys: "
    f"{', '.join(sorted(config.keys()))}"
  ) in misspelt


# One entry point per config family (model, data, bench): the value check is cli.run's, shared.
@pytest.mark.parametrize("module", ["dump_param_shardings", "precompute", "bench"])
def test_mistyped_value_names_key_and_type(module):
  config = _load_config(_default_config(module))
  path, value = _first_leaf(config, int)
  mistyped = _one_line_error(_entry(module, f"--config.{path}=abc"))
  assert f"--config.{path}=abc: expected int (default {value!r})" in mistyped


def test_nested_misspelt_key_lists_that_level():
  spec = "configs/medq_uni.py:size=tiny"
  result = _entry("dump_param_shardings", f"--config={spec}", "--config.train.stpes=3")
  line = _one_line_error(result)
  train_keys = ", ".join(sorted(_load_config(spec).train.keys()))
  assert f"--config.train.stpes: config.train has no key 'stpes'; valid keys: {train_keys}" in line
  line = _one_line_error(_entry("dump_param_shardings", "--config.train.steps.x=3"))
  assert "--config.train.steps.x: config.train.steps is a int (20), not a group of keys" in line


def test_bad_config_arg_and_missing_file_are_one_line():
  line = _one_line_error(_entry("dump_param_shardings", "--config=configs/medq_uni.py:size=tny"))
  assert "--config=configs/medq_uni.py:size=tny: ValueError: config arg: unknown size 'tny'" in line
  line = _one_line_error(_entry("dump_param_shardings", "--config=configs/nope.py:size=tiny"))
  assert "--config=configs/nope.py:size=tiny: no such config file 'configs/nope.py'" in line


_DEVICE_PROBE = textwrap.dedent("""
    import jax  # imported at the top, as entry points do
    from absl import app
    from launch import cli, distributed

    def main(argv):
      if "--touch_jax_first" in argv:
        jax.numpy.zeros(1).block_until_ready()
      print("devices", distributed.initialize(), jax.local_device_count(), jax.default_backend())

    cli.run(main)
""")


def _probe(env, *args):
  return _run(["-c", _DEVICE_PROBE, *args], env=env)


def test_local_devices_takes_effect_from_main(subprocess_env):
  result = _probe(subprocess_env(), "--local_devices=3")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "devices (0, 1) 3 cpu" in result.stdout
  late = _probe(subprocess_env(), "--local_devices=3", "--", "--touch_jax_first")
  assert late.returncode != 0
  assert "--local_devices=3: the JAX backend was already started" in late.stderr


@pytest.mark.parametrize(
  "args, message",
  [
    (["--num_processes=2"], "--num_processes=2 needs --coordinator=HOST:PORT"),
    (["--coordinator=127.0.0.1:1234"], "needs --num_processes and --process_id"),
    (
      ["--coordinator=127.0.0.1:1234", "--num_processes=2", "--process_id=2"],
      "--process_id=2: expected 0 <= process_id < --num_processes=2",
    ),
  ],
)
def test_distributed_flag_mistakes_are_usage_errors(args, message, subprocess_env):
  result = _probe(subprocess_env(), *args)
  assert result.returncode != 0 and message in result.stderr, result.stderr[-3000:]


def test_console_script_help_shows_the_entry_points_flags():
  # What setup.cfg's console_scripts wrapper runs: run_main() from a __main__ that is not the
  # entry point's module.
  script = "import sys; from launch.bench import run_main; sys.argv[0] = 'medq-bench'; run_main()"
  result = _run(["-c", script, "--help"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.lstrip().startswith("MedQ-Bench entry point")
  for flag in ("--config:", "--model_config:", "--out_dir:", "--local_devices:"):
    assert flag in result.stdout
