"""The expert review queue (MedQ-Engine §2.3): export as JSONL and CSV, import Accept / Edit /
Reject decisions back.

Export columns: id, image_path, question, self_answer, oracle_answer (plus empty `decision` and
`edited_text` columns for the reviewer to fill). Files are written atomically (temporary file,
then rename), so a killed export leaves the previous file or none.

Import reads the same JSONL or CSV (by extension) and returns {id: Decision}. Rows whose decision
is empty are pending and skipped. A decision is accept, edit or reject (any case); edit needs a
non-empty edited_text. Any bad row (unknown id, unknown decision, edit without text, an id twice,
a malformed line) raises one ValueError naming the file and line, and nothing is imported: the
caller's decisions are only replaced by a complete, valid import. What a decision makes of a
sample: accept -> the oracle's answer (the annotation the reviewer was shown as the reference),
edit -> the reviewer's text, reject -> the sample is dropped (`final_label`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Iterable, Mapping

from data_pipeline import atomic_files

FIELDS = ("id", "image_path", "question", "self_answer", "oracle_answer")
DECISION_FIELDS = ("decision", "edited_text")
DECISIONS = ("accept", "edit", "reject")


@dataclasses.dataclass(frozen=True)
class ReviewItem:
  id: str
  image_path: str
  question: str
  self_answer: str
  oracle_answer: str


@dataclasses.dataclass(frozen=True)
class Decision:
  id: str
  decision: str  # accept | edit | reject
  edited_text: str = ""


def _atomic_write(path: str, write) -> None:
  atomic_files.atomic_write(path, write, newline="")


def _rows(items: Iterable[ReviewItem]) -> list[dict]:
  rows, seen = [], set()
  for item in items:
    if item.id in seen:
      raise ValueError(f"review queue: id {item.id!r} appears twice")
    seen.add(item.id)
    rows.append({**dataclasses.asdict(item), "decision": "", "edited_text": ""})
  return rows


def export_jsonl(items: Iterable[ReviewItem], path: str) -> int:
  """Writes one JSON object per item; returns the number written."""
  rows = _rows(items)
  _atomic_write(
    path, lambda h: h.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
  )
  return len(rows)


def export_csv(items: Iterable[ReviewItem], path: str) -> int:
  """Writes a CSV with a header row (RFC 4180 quoting); returns the number of items."""
  rows = _rows(items)

  def write(handle):
    writer = csv.DictWriter(handle, fieldnames=FIELDS + DECISION_FIELDS)
    writer.writeheader()
    writer.writerows(rows)

  _atomic_write(path, write)
  return len(rows)


def _read_rows(path: str) -> list[tuple[int, dict]]:
  """(line number, row) pairs of a JSONL or CSV file."""
  try:
    with open(path, encoding="utf-8", newline="") as handle:
      if path.endswith(".jsonl"):
        rows = []
        for number, line in enumerate(handle, 1):
          if not line.strip():
            continue
          try:
            row = json.loads(line)
          except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not a JSON object ({error.msg})") from None
          if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
          rows.append((number, row))
        return rows
      if path.endswith(".csv"):
        reader = csv.DictReader(handle)
        missing = {"id", "decision"} - set(reader.fieldnames or ())
        if missing:
          raise ValueError(f"{path}:1: header lacks columns {sorted(missing)}")
        rows, first_line = [], reader.line_num + 1
        try:
          for row in reader:  # a quoted field may span lines: name the row's first line
            rows.append((first_line, row))
            first_line = reader.line_num + 1
        except csv.Error as error:
          raise ValueError(f"{path}:{first_line}: malformed CSV ({error})") from None
        return rows
  except UnicodeDecodeError as error:
    raise ValueError(f"{path}: not UTF-8 text (byte offset {error.start})") from None
  raise ValueError(f"{path}: expected a .jsonl or .csv review file")


def import_decisions(path: str, queue_ids: Iterable[str]) -> dict[str, Decision]:
  """The decisions in a reviewed file, for ids in the queue; ValueError naming the first bad line."""
  known = set(queue_ids)
  decisions: dict[str, Decision] = {}
  for number, row in _read_rows(path):
    where = f"{path}:{number}"
    item_id = row.get("id")
    item_id = str(item_id) if item_id is not None else ""
    if item_id not in known:
      raise ValueError(f"{where}: unknown id {item_id!r} (not in the review queue)")
    raw = row.get("decision") or ""
    if not isinstance(raw, str):
      raise ValueError(f"{where}: decision must be text, got {raw!r}")
    decision = raw.strip().lower()
    if not decision:
      continue  # pending
    if decision not in DECISIONS:
      raise ValueError(f"{where}: unknown decision {raw!r} (expected Accept, Edit or Reject)")
    text = row.get("edited_text") or ""
    if not isinstance(text, str):
      raise ValueError(f"{where}: edited_text must be text, got {text!r}")
    if decision == "edit" and not text.strip():
      raise ValueError(f"{where}: decision Edit for id {item_id!r} needs a non-empty edited_text")
    if item_id in decisions:
      raise ValueError(f"{where}: id {item_id!r} is decided twice")
    decisions[item_id] = Decision(item_id, decision, text.strip() if decision == "edit" else "")
  return decisions


def merge(existing: Mapping[str, Decision], new: Mapping[str, Decision]) -> dict[str, Decision]:
  """A new mapping: `existing` updated by `new` (a re-imported file may revise a decision)."""
  return {**existing, **new}


def final_label(item: ReviewItem, decision: Decision) -> str | None:
  """The label a decision gives: oracle answer (accept), edited text (edit), None (reject)."""
  if decision.id != item.id:
    raise ValueError(f"decision for {decision.id!r} applied to item {item.id!r}")
  if decision.decision == "accept":
    return item.oracle_answer
  if decision.decision == "edit":
    return decision.edited_text
  return None
