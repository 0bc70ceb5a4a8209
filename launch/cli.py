"""How every entry point reads its command line: big_vision's convention, with errors as one line.

  _CONFIG = cli.define_config_file("config", "configs/medq_uni.py", "Config file.")
  ...
  def run_main():
    cli.run(main)

`define_config_file` is `config_flags.DEFINE_config_file(..., lock_config=True)`, and `run` is
absl's `app.run`, with two changes:

- A bad config override fails with one line that names the key and lists the valid keys of that
  level (`--config.train.stpes=3: config.train has no key 'stpes'; valid keys: alpha_l1, ...`);
  a mistyped value names the key and the expected type. ml_collections alone prints a traceback
  with at most a close match. (With a default config file the overrides are applied when the flag
  is defined, at import, so the definition needs the same treatment as the parsing.)
- `--help` exits 0 (absl exits 1): asking for help is not a failure.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

from absl import app, flags
from ml_collections import config_dict, config_flags
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

_HELP = re.compile(r"^--?(help|helpshort|helpfull|\?)(=(true|1))?$")
_BAD_VALUE = re.compile(r"^flag --(?P<flag>[^=\s]+)=(?P<value>.*?): (?P<reason>.*)$", re.S)
_BAD_CONFIG_FILE = re.compile(r"^flag --(?P<spec>\S+=\S*): Error whilst parsing config file")
# Config-file flags by name -> their default spec ("configs/x.py:arg" or None).
_DEFAULTS: dict[str, str | None] = {}


def define_config_file(name: str, default: str | None, help_string: str):
  """`config_flags.DEFINE_config_file(name, default, help_string, lock_config=True)`; a bad
  override of the default config fails here with one line (see the module docstring)."""
  _DEFAULTS[name] = default
  try:
    holder = config_flags.DEFINE_config_file(name, default, help_string, lock_config=True)
  except (KeyError, AttributeError, flags.Error, ValueError) as error:
    message = explain(sys.argv, error)
    if message is None:
      raise
    _fail(message)
  # A key flag of the entry point that called us (absl's naming: __main__ is sys.argv[0]), so
  # that its --help lists the flag.
  caller = sys._getframe(1).f_globals.get("__name__", "")  # pylint: disable=protected-access
  flags.FLAGS.register_key_flag_for_module(
    sys.argv[0] if caller == "__main__" else caller, flags.FLAGS[name]
  )
  return holder


def run(main: Callable[[list[str]], None]) -> None:
  """absl's `app.run(main)` with bad flags reported as one line and `--help` exiting 0."""
  module, script = sys.modules[main.__module__], sys.modules["__main__"]
  if module is not script:  # a console script (medq-bench): its --help shows the entry point's
    script.__doc__ = script.__doc__ or module.__doc__
    for flag in flags.FLAGS.get_key_flags_for_module(module.__name__):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main, flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing; a bad flag prints one line naming it and exits 1."""
  try:
    remaining = flags.FLAGS(argv)
    for name in _DEFAULTS:  # a missing config file surfaces only when the config is read
      if not isinstance(flags.FLAGS[name].value, (config_dict.ConfigDict, type(None))):
        spec = _flag_value(argv, name) or _DEFAULTS[name]
        _fail(
          f"--{name}={spec}: no such config file {spec.split(':', 1)[0]!r} (paths are "
          "relative to the current directory: run from the repository root)"
        )
    return remaining
  except SystemExit as exit_request:
    if exit_request.code == 1 and any(_HELP.match(arg) for arg in argv[1:]):
      sys.exit(0)
    raise
  except (flags.Error, KeyError, AttributeError) as error:
    message = explain(argv, error)
    if message is None:
      if not isinstance(error, flags.Error):
        raise
      message = " ".join(str(error).split())
  _fail(message)


def _fail(message: str) -> None:
  sys.stderr.write(f"FATAL Flags parsing error: {message}\nPass --help to see the flags.\n")
  sys.exit(1)


def _flag_value(argv: list[str], name: str) -> str | None:
  """The last `--name=value` (or `--name value`) in argv, else None."""
  value = None
  for index, arg in enumerate(argv[1:], start=1):
    if re.match(rf"^--?{re.escape(name)}=", arg):
      value = arg.split("=", 1)[1]
    elif re.match(rf"^--?{re.escape(name)}$", arg) and index + 1 < len(argv):
      value = argv[index + 1]
  return value


def _override_paths(argv: list[str], name: str) -> list[str]:
  """The dotted paths of every `--name.path[=value]` / `--noname.path` in argv, in order."""
  found = []
  for arg in argv[1:]:
    match = re.match(rf"^--?(no)?{re.escape(name)}\.([^=]+)", arg)
    if match:
      found.append(match.group(2))
  return found


def _load(argv: list[str], name: str):
  """The config that `--name` (or its default) names, without overrides; None if unloadable."""
  spec = _flag_value(argv, name) or _DEFAULTS.get(name)
  if not spec:
    return None
  try:
    config = ConfigFileFlagParser(name).parse(spec)
  except Exception:  # a broken config file: the parse error itself is reported
    return None
  return config if isinstance(config, config_dict.ConfigDict) else None


def _missing_key(config, name: str, path: str) -> str | None:
  """The message for the first key of `path` that `config` does not have, else None."""
  node, where = config, name
  for part in path.split("."):
    if not isinstance(node, config_dict.ConfigDict):
      return f"--{name}.{path}: {where} is a {type(node).__name__} ({node!r}), not a group of keys"
    if part not in node:
      return (
        f"--{name}.{path}: {where} has no key {part!r}; valid keys: "
        f"{', '.join(sorted(node.keys()))}"
      )
    node, where = node[part], f"{where}.{part}"
  return None


def explain(argv: list[str], error: Exception) -> str | None:
  """One line naming the bad config flag behind `error`, or None when it is about another flag."""
  for name in _DEFAULTS:
    paths = _override_paths(argv, name)
    config = _load(argv, name) if paths else None
    for path in paths if config is not None else ():
      message = _missing_key(config, name, path)
      if message:
        return message
  text = str(error)
  bad_value = _BAD_VALUE.match(text)
  if bad_value and bad_value["flag"].split(".", 1)[0] in _DEFAULTS and "." in bad_value["flag"]:
    name, path = bad_value["flag"].split(".", 1)
    config = _load(argv, name)
    if config is not None and _missing_key(config, name, path) is None:
      default = config
      for part in path.split("."):
        default = default[part]
      reason = " ".join(bad_value["reason"].split())
      return (
        f"--{name}.{path}={bad_value['value']}: expected {type(default).__name__} "
        f"(default {default!r}): {reason}"
      )
  bad_file = _BAD_CONFIG_FILE.match(text)
  if bad_file:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"--{bad_file['spec']}: {lines[-1]}"
  return None
