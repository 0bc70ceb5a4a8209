"""`--name=value` lookup in sys.argv for scripts that must set the environment (XLA_FLAGS,
JAX_PLATFORMS) before anything imports JAX, so before absl flags are defined."""

import sys


def flag(name, default=None):
  """The value of the last `--name=value` on the command line, else `default`."""
  value = default
  for arg in sys.argv[1:]:
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
  return value
