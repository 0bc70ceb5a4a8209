"""Reading and writing tables: VLMEvalKit TSV, CSV and our JSONL.

Every row comes back with its 1-based data row number (``_row``) so errors can name
it. Values are strings (JSONL values are converted with ``str`` except lists, which
stay lists, e.g. ``image_path``).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from medq_jax.bench.schema import BenchInputError

csv.field_size_limit(sys.maxsize)  # base64 images are long fields


def table_format(path: str) -> str:
  lower = path.lower()
  if lower.endswith(".jsonl"):
    return "jsonl"
  if lower.endswith(".csv"):
    return "csv"
  if lower.endswith(".tsv"):
    return "tsv"
  raise BenchInputError(f"{path}: unknown table format (expected .tsv, .csv or .jsonl)")


def read_rows(path: str) -> tuple[list[str], list[dict[str, Any]]]:
  """Returns (column names, rows); each row has ``_row`` = its 1-based data row number."""
  if not os.path.exists(path):
    raise BenchInputError(f"{path}: file not found")
  fmt = table_format(path)
  rows: list[dict[str, Any]] = []
  if fmt == "jsonl":
    columns: list[str] = []
    with open(path, encoding="utf-8") as handle:
      for line_number, line in enumerate(handle, start=1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError as error:
          raise BenchInputError(
            f"{path}: line {line_number}: not valid JSON ({error.msg})"
          ) from None
        if not isinstance(record, dict):
          raise BenchInputError(f"{path}: line {line_number}: expected a JSON object")
        for key in record:
          if key not in columns:
            columns.append(key)
        row = {k: (v if isinstance(v, list) or v is None else str(v)) for k, v in record.items()}
        row["_row"] = line_number
        rows.append(row)
    return columns, rows
  delimiter = "\t" if fmt == "tsv" else ","
  with open(path, encoding="utf-8", newline="") as handle:
    reader = csv.DictReader(handle, delimiter=delimiter)
    columns = list(reader.fieldnames or [])
    for row_number, record in enumerate(reader, start=1):
      row: dict[str, Any] = {k: v for k, v in record.items() if k is not None}
      row["_row"] = row_number
      rows.append(row)
  return columns, rows


def write_rows(
  path: str, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None
) -> None:
  """Writes rows as TSV/CSV (VLMEvalKit style) or JSONL, chosen by extension."""
  fmt = table_format(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if columns is None:
    columns = []
    for row in rows:
      columns.extend(k for k in row if k not in columns and k != "_row")
  if fmt == "jsonl":
    with open(path, "w", encoding="utf-8") as handle:
      for row in rows:
        handle.write(json.dumps({k: row.get(k, "") for k in columns}, ensure_ascii=False) + "\n")
    return
  delimiter = "\t" if fmt == "tsv" else ","
  with open(path, "w", encoding="utf-8", newline="") as handle:
    writer = csv.DictWriter(
      handle, fieldnames=list(columns), delimiter=delimiter, extrasaction="ignore"
    )
    writer.writeheader()
    for row in rows:
      writer.writerow({k: _cell(row.get(k, "")) for k in columns})


def _cell(value: Any) -> str:
  if isinstance(value, list):
    return json.dumps(value)
  return "" if value is None else str(value)


def first_present(row: dict[str, Any], names: Iterable[str]) -> str:
  """The first non-empty value among alias column names, stripped; "" if none."""
  for name in names:
    value = row.get(name)
    if value is None or isinstance(value, list):
      continue
    text = str(value).strip()
    if text and text.lower() != "nan":
      return text
  return ""
