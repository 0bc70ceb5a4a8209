"""Which parameters a run freezes (`train.freeze`), on top of the stage's rule.

`train.freeze` is a tuple of named groups and regexes. A frozen parameter is left out of the
trainable subtree (`state.split_params`), so the train step forms no gradient for it, the
optimizer keeps no state for it and it stays bit-identical; the stage rule (stage 1: the gen
parameters alone, `train.stage1_trainable`) applies first. Named groups (BAGEL's `freeze_vit`,
`freeze_und`, ... switches, by parameter path):

  vae         the frozen VAE: outside the parameter tree, always frozen (accepted, a no-op)
  vit         the SigLIP encoder (`vit/...`; not the connector, as BAGEL's freeze_vit)
  connector   the ViT -> LLM MLP connector
  embeddings  the input token embedding (`embed_tokens`)
  lm_head     the output projection (untied from the embedding in this model)
  und         everything the stage-1 rule freezes (the und expert, ViT, embeddings, LM head)
  gen         everything the stage-1 rule trains (the gen expert, vae2llm, llm2vae, ...)

Any other entry is a regex searched in the parameter path ("decoder/layers/mlp/up_proj/kernel");
an entry that matches no parameter, or does not compile, is a config error (`problems`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

VAE = "vae"


def _gen(train_config) -> Callable[[str], bool]:
  return lambda name: re.search(train_config.stage1_trainable, name) is not None


GROUPS: dict[str, Callable] = {
  VAE: lambda train_config: lambda name: False,
  "vit": lambda train_config: lambda name: name.startswith("vit/"),
  "connector": lambda train_config: lambda name: name.startswith("connector/"),
  "embeddings": lambda train_config: lambda name: name.startswith("embed_tokens/"),
  "lm_head": lambda train_config: lambda name: name.startswith("lm_head/"),
  "und": lambda train_config: lambda name: not _gen(train_config)(name),
  "gen": _gen,
}


def entries(train_config) -> tuple[str, ...]:
  """`train.freeze` as a tuple of strings (a comma-separated string is accepted too)."""
  value = train_config.get("freeze", ()) or ()
  if isinstance(value, str):
    value = value.split(",")
  return tuple(str(entry).strip() for entry in value if str(entry).strip())


def _matcher(entry: str, train_config) -> Callable[[str], bool]:
  if entry in GROUPS:
    return GROUPS[entry](train_config)
  pattern = re.compile(entry)
  return lambda name: pattern.search(name) is not None


def frozen_predicate(train_config) -> Callable[[str], bool]:
  """name -> whether `train.freeze` freezes the parameter at that path."""
  matchers = [_matcher(entry, train_config) for entry in entries(train_config)]
  return lambda name: any(match(name) for match in matchers)


def stage_trains(name: str, stage: int, stage1_regex: str) -> bool:
  """The stage's rule: everything trains in stage 2, the gen (Med-IR) parameters matching
  `stage1_regex` in stage 1."""
  return stage != 1 or re.search(stage1_regex, name) is not None


def trains_predicate(train_config) -> Callable[[str], bool]:
  """name -> whether the parameter trains in this run: the stage's rule and not frozen by
  `train.freeze`."""
  frozen = frozen_predicate(train_config)
  stage, regex = train_config.stage, train_config.stage1_trainable
  return lambda name: stage_trains(name, stage, regex) and not frozen(name)


def problems(names: Iterable[str], train_config) -> list[str]:
  """One line per problem of `train.freeze` against the parameter paths `names` (empty: fine):
  a regex that does not compile, an entry that matches no parameter, nothing left to train."""
  names = list(names)
  found = []
  for entry in entries(train_config):
    if entry not in GROUPS:
      try:
        re.compile(entry)
      except re.error as error:
        found.append(f"train.freeze entry {entry!r} is not a valid regex ({error})")
        continue
    if entry != VAE and not any(_matcher(entry, train_config)(name) for name in names):
      found.append(
        f"train.freeze entry {entry!r} matches no parameter: expected a group "
        f"({', '.join(GROUPS)}) or a regex searched in paths like {names[0]!r}"
        if names
        else f"train.freeze entry {entry!r}: the model has no parameters"
      )
  if not found and names and not any(map(trains_predicate(train_config), names)):
    found.append(
      f"train.freeze={entries(train_config)!r} with train.stage={train_config.stage} "
      "leaves no parameter to train"
    )
  return found
