"""Config helpers shared by every `configs/*.py` file (big_vision style)."""

from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses a `key=value,key2=value2` config argument into typed options.

  Types come from the defaults: `parse_arg("size=small,stage=2", size="tiny", stage=1)`.
  A bare `key` sets a boolean default to True. Unknown keys and untypeable values fail with a
  message naming the option.
  """
  options = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    key, value = key.strip(), value.strip()
    if key not in defaults:
      raise ValueError(f"config arg: unknown option {key!r}; known options: {sorted(defaults)}")
    default = defaults[key]
    if not sep:
      if not isinstance(default, bool):
        raise ValueError(f"config arg: option {key!r} needs a value ({key}=...)")
      options[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config arg: option {key!r} expects a boolean, got {value!r}")
      options[key] = value.lower() in ("true", "1")
    elif isinstance(default, int):
      try:
        options[key] = int(value)
      except ValueError:
        raise ValueError(f"config arg: option {key!r} expects an int, got {value!r}") from None
    elif isinstance(default, float):
      try:
        options[key] = float(value)
      except ValueError:
        raise ValueError(f"config arg: option {key!r} expects a float, got {value!r}") from None
    else:
      options[key] = value
  return ml_collections.ConfigDict(options)
