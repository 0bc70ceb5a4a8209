"""Loading MedQ-Bench items from VLMEvalKit TSV (or our JSONL) with validation.

Files: ``medqbench_QA_{dev,test}.tsv`` (perception), ``medqbench_description_{dev,test}.tsv``
(no-reference reasoning) and ``medqbench_paired_description_{dev,test}.tsv`` (paired).

Every problem is reported with file, data row number, index and field. With
``on_error="raise"`` (default) all problems are raised together; with
``on_error="exclude"`` bad rows are left out and returned as `Exclusion` records so
reports can count them. Rows whose image or answer (golden description) is simply absent
are always skipped, logged and counted ("missing image (skipped)", ...), whatever
``on_error``: there is nothing to score them on. A missing required column, and a file
that leaves no item to score ("0 items"), always raise.
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from medq_jax.bench import image_codec
from medq_jax.bench.io_files import first_present, read_rows
from medq_jax.bench.schema import (
  OPTION_LETTERS,
  UNKNOWN,
  BenchInputError,
  Exclusion,
  McqItem,
  ReasoningItem,
)

QUESTION_TYPE_COLUMNS = ("question_type", "type", "qtype", "category")
LEVEL_COLUMNS = ("degradation_level", "level", "degradation", "severity")
SCOPE_COLUMNS = ("question_scope", "scope", "general_or_specific", "question_category")
GRANULARITY_COLUMNS = ("granularity", "comparison_granularity", "difficulty", "group")
MAX_LISTED_PROBLEMS = 20
logger = logging.getLogger(__name__)


@dataclasses.dataclass
class LoadResult:
  """Items that loaded, and the rows left out (only with ``on_error="exclude"``)."""

  items: list
  exclusions: list[Exclusion]
  path: str


@dataclasses.dataclass
class _Problem:
  row: int
  index: str
  field: str
  message: str
  skip: bool = False  # an absent image/answer: skipped and counted, never an error

  def text(self, path: str) -> str:
    return f"{path}: row {self.row} (index {self.index!r}), field '{self.field}': {self.message}"


# ----------------------------------------------------------------------------- normalisers
def normalize_question_type(value: str) -> str:
  key = re.sub(r"[^a-z]", "", value.lower())
  if key in ("yesorno", "yesno", "yn", "binary", "yesornoquestion"):
    return "Yes-or-No"
  if key in ("what", "whatquestion"):
    return "What"
  if key in ("how", "howquestion"):
    return "How"
  return UNKNOWN if not key else value


def infer_question_type(question: str, options: dict[str, str]) -> str:
  """Yes-or-No when the options are Yes/No; else What/How from the first word."""
  texts = sorted(v.strip().rstrip(".").lower() for v in options.values())
  if texts == ["no", "yes"]:
    return "Yes-or-No"
  first = question.strip().split(" ", 1)[0].lower() if question.strip() else ""
  if first in ("what", "which"):
    return "What"
  if first == "how":
    return "How"
  return UNKNOWN


def normalize_level(value: str) -> str:
  key = value.strip().lower().replace("_", " ").replace("-", " ")
  key = key.replace(" degradation", "").strip()
  if key in ("none", "no", "clean", "no degradation", "0", "original", "reference"):
    return "none"
  if key in ("mild", "slight", "low", "light", "1"):
    return "mild"
  if key in ("moderate", "medium"):
    return "moderate"
  if key in ("severe", "heavy", "high", "strong", "2"):
    return "severe"
  return key or UNKNOWN


def normalize_scope(value: str) -> str:
  key = value.strip().lower().replace("_", "-").replace(" ", "-")
  if key in ("general", "general-medical", "general-question", "general-medical-question"):
    return "general"
  if key.startswith("modality") or key in ("specific", "modality-specific-question"):
    return "modality-specific"
  return key or UNKNOWN


def normalize_granularity(value: str) -> str:
  key = value.strip().lower().replace("_", "-")
  if key in ("fine", "fine-grained", "finegrained", "hard"):
    return "fine"
  if key in ("coarse", "coarse-grained", "coarsegrained", "easy"):
    return "coarse"
  return key or UNKNOWN


def normalize_answer(value: str) -> str | None:
  """'a'/'B'/' C '/'0'-'3' -> 'A'-'D'; anything else -> None."""
  text = value.strip().upper().rstrip(".")
  if text in OPTION_LETTERS:
    return text
  if text in ("0", "1", "2", "3"):
    return OPTION_LETTERS[int(text)]
  return None


# ----------------------------------------------------------------------------- images
class _ImageTable:
  """Resolves ``image`` values, following short values to the row they name."""

  def __init__(self, rows: Sequence[dict[str, Any]], path: str):
    self.by_index = {}
    for row in rows:
      index = str(row.get("index", "")).strip()
      if index and index not in self.by_index:
        self.by_index[index] = row.get("image")
    self.base_dir = os.path.dirname(os.path.abspath(path))

  def resolve(self, value: Any, check: bool) -> str:
    """Returns resolved base64 text; raises ValueError with a reason."""
    seen = []
    current = value
    while isinstance(current, str) and current.strip() and image_codec.is_row_reference(current):
      target = current.strip()
      if target in seen or len(seen) > 8:
        raise ValueError(f"image references form a cycle: {' -> '.join(seen + [target])}")
      if target not in self.by_index:
        raise ValueError(f"short value {target!r} (<= 64 chars) names no row index")
      seen.append(target)
      current = self.by_index[target]
    if not isinstance(current, str):
      raise ValueError(f"expected base64 text, got {type(current).__name__}")
    if not current.strip():
      raise ValueError("empty image")
    if check:
      image_codec.decode_bytes(current)
    return current

  def path(self, value: str) -> str:
    full = value if os.path.isabs(value) else os.path.join(self.base_dir, value)
    if not os.path.exists(full):
      raise ValueError(f"image file {full} not found")
    return "path:" + full


def parse_path_list(value: Any) -> list[str]:
  if isinstance(value, list):
    return [str(v) for v in value]
  text = str(value).strip()
  if not text:
    return []
  if text.startswith("["):
    try:
      parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      raise ValueError(f"image_path {text[:60]!r} is not a list") from None
    return [str(v) for v in parsed]
  return [text]


def load_image(ref: str) -> np.ndarray:
  """An item's image reference (base64 text or 'path:...') -> uint8 array."""
  if ref.startswith("path:"):
    from PIL import Image

    with Image.open(ref[5:]) as image:
      return image_codec.pil_to_uint8(image)
  return image_codec.decode_image(ref)


# ----------------------------------------------------------------------------- loaders
def _require_columns(path: str, columns: Sequence[str], required: Sequence[str]) -> None:
  missing = [c for c in required if c not in columns]
  if missing:
    raise BenchInputError(
      f"{path}: missing required column(s) {missing}; found columns {list(columns)}"
    )


def _finish(
  path: str, items: list, problems: list[_Problem], on_error: str, n_rows: int
) -> LoadResult:
  skipped = list({p.row: p for p in reversed(problems) if p.skip}.values())[::-1]  # one per row
  problems = [p for p in problems if not p.skip]
  for problem in skipped:
    logger.warning("skipped: %s", problem.text(path))
  if problems and on_error == "raise":
    lines = [p.text(path) for p in problems[:MAX_LISTED_PROBLEMS]]
    more = len(problems) - len(lines)
    if more > 0:
      lines.append(f"... and {more} more problem(s)")
    raise BenchInputError(f"{len(problems)} problem(s) in {path}:\n" + "\n".join(lines))
  exclusions = [
    Exclusion(p.index or f"row{p.row}", f"missing {p.field} (skipped)", p.text(path))
    for p in skipped
  ]
  exclusions += [
    Exclusion(p.index or f"row{p.row}", f"bad input: {p.field}", p.text(path)) for p in problems
  ]
  if not items:
    detail = f" of {n_rows} row(s); {len(exclusions)} skipped or excluded" if n_rows else ""
    raise BenchInputError(f"{path}: 0 items to score{detail or ' (the file has no data rows)'}")
  return LoadResult(items=items, exclusions=exclusions, path=path)


def _check_index(row: dict, seen: dict[str, int], problems: list[_Problem]) -> str | None:
  index = str(row.get("index", "")).strip()
  if not index:
    problems.append(_Problem(row["_row"], "", "index", "empty index"))
    return None
  if index in seen:
    problems.append(
      _Problem(row["_row"], index, "index", f"duplicated index (first seen at row {seen[index]})")
    )
    return None
  seen[index] = row["_row"]
  return index


def load_mcq_items(path: str, on_error: str = "raise", check_images: bool = True) -> LoadResult:
  """Reads a perception file (``medqbench_QA_*.tsv`` or JSONL) into `McqItem`s."""
  columns, rows = read_rows(path)
  _require_columns(path, columns, ("index", "question", "answer", "A", "B"))
  if "image" not in columns and "image_path" not in columns:
    raise BenchInputError(f"{path}: missing required column 'image' (or 'image_path')")
  images = _ImageTable(rows, path)
  items, problems, seen = [], [], {}
  for row in rows:
    index = _check_index(row, seen, problems)
    if index is None:
      continue
    before = len(problems)
    question = first_present(row, ["question"])
    if not question:
      problems.append(_Problem(row["_row"], index, "question", "empty question"))
    options = {}
    for letter in OPTION_LETTERS:
      text = first_present(row, [letter])
      if text:
        options[letter] = text
    if len(options) < 2:
      problems.append(
        _Problem(row["_row"], index, "A-D", f"needs at least two options, found {len(options)}")
      )
    raw_answer = first_present(row, ["answer"])
    answer = normalize_answer(raw_answer)
    if not raw_answer:
      problems.append(_Problem(row["_row"], index, "answer", "no answer", skip=True))
    elif answer is None:
      problems.append(
        _Problem(
          row["_row"], index, "answer", f"unknown answer {raw_answer!r} (expected A-D or 0-3)"
        )
      )
    elif answer not in options:
      problems.append(
        _Problem(
          row["_row"],
          index,
          "answer",
          f"answer {answer} names an empty option (options: {sorted(options)})",
        )
      )
    image = None
    try:
      if "image" in columns and first_present(row, ["image"]):
        image = images.resolve(row["image"], check_images)
      elif row.get("image_path") and parse_path_list(row["image_path"]):
        image = images.path(parse_path_list(row["image_path"])[0])
      else:
        problems.append(_Problem(row["_row"], index, "image", "no image", skip=True))
    except ValueError as error:
      problems.append(_Problem(row["_row"], index, "image", str(error)))
    if len(problems) > before:
      continue
    raw_type = first_present(row, QUESTION_TYPE_COLUMNS)
    qtype, qsource = normalize_question_type(raw_type), "column"
    if qtype == UNKNOWN:
      qtype, qsource = infer_question_type(question, options), "inferred"
    items.append(
      McqItem(
        index=index,
        question=question,
        options=options,
        answer=answer,
        modality=first_present(row, ["modality"]) or UNKNOWN,
        question_type=qtype,
        question_type_source=qsource,
        degradation_level=normalize_level(first_present(row, LEVEL_COLUMNS)),
        scope=normalize_scope(first_present(row, SCOPE_COLUMNS)),
        image=image,
        source=path,
      )
    )
  return _finish(path, items, problems, on_error, len(rows))


def load_reasoning_items(
  path: str, kind: str, on_error: str = "raise", check_images: bool = True
) -> LoadResult:
  """Reads a description file; ``kind`` is "noref" or "paired"."""
  if kind not in ("noref", "paired"):
    raise ValueError(f"kind must be 'noref' or 'paired', got {kind!r}")
  columns, rows = read_rows(path)
  _require_columns(path, columns, ("index", "description"))
  if kind == "noref" and "image" not in columns and "image_path" not in columns:
    raise BenchInputError(f"{path}: missing required column 'image' (or 'image_path')")
  if kind == "paired" and not (
    {"image_a", "image_b"} <= set(columns) or "image_path" in columns or "image" in columns
  ):
    raise BenchInputError(
      f"{path}: paired items need columns 'image_a' and 'image_b', or 'image_path'"
    )
  images = _ImageTable(rows, path)
  items, problems, seen = [], [], {}
  for row in rows:
    index = _check_index(row, seen, problems)
    if index is None:
      continue
    description = first_present(row, ["description"])
    if not description:
      problems.append(
        _Problem(row["_row"], index, "description", "empty golden description", skip=True)
      )
      continue
    try:
      refs = _row_images(row, columns, images, kind, check_images)
    except _NoImage as error:
      problems.append(_Problem(row["_row"], index, "image", str(error), skip=True))
      continue
    except ValueError as error:
      problems.append(_Problem(row["_row"], index, "image", str(error)))
      continue
    items.append(
      ReasoningItem(
        index=index,
        kind=kind,
        description=description,
        question=first_present(row, ["question"]),
        modality=first_present(row, ["modality"]) or UNKNOWN,
        granularity=normalize_granularity(first_present(row, GRANULARITY_COLUMNS)),
        degradation_level=normalize_level(first_present(row, LEVEL_COLUMNS)),
        images=tuple(refs),
        source=path,
      )
    )
  return _finish(path, items, problems, on_error, len(rows))


class _NoImage(ValueError):
  """A row without (all of) its images: skipped and counted."""


def _row_images(row, columns, images: _ImageTable, kind: str, check: bool) -> list[str]:
  if kind == "paired" and ("image_a" in columns or "image_b" in columns):
    present = [first_present(row, [name]) for name in ("image_a", "image_b")]
    if all(present):
      return [images.resolve(row["image_a"], check), images.resolve(row["image_b"], check)]
    if not row.get("image_path") and not first_present(row, ["image"]):
      missing = [n for n, v in zip(("image_a", "image_b"), present) if not v]
      raise _NoImage(f"no {' and no '.join(missing)}")
  if row.get("image_path"):
    refs = [images.path(p) for p in parse_path_list(row["image_path"])]
  elif "image" in columns and first_present(row, ["image"]):
    value = row["image"]
    if isinstance(value, list) or str(value).strip().startswith("["):
      refs = [images.resolve(v, check) for v in parse_path_list(value)]
    else:
      refs = [images.resolve(value, check)]
  else:
    raise _NoImage("no image (expected image_a/image_b, image_path or image)")
  expected = 2 if kind == "paired" else 1
  if len(refs) != expected:
    raise ValueError(f"expected {expected} image(s), found {len(refs)}")
  return refs
