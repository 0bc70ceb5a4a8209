"""Reading and writing tables: VLMEvalKit TSV, CSV, XLSX (VLMEvalKit's prediction files) and
our JSONL.

Every row comes back with its 1-based data row number (``_row``) so errors can name
it. Values are strings (JSONL values are converted with ``str`` except lists, which
stay lists, e.g. ``image_path``; empty XLSX cells are ""). Text files must be UTF-8 (a
BOM is allowed): anything else is rejected naming the byte offset and line, rather than
guessed at.
"""

from __future__ import annotations

import csv
import io
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
  if lower.endswith(".xlsx"):
    return "xlsx"
  raise BenchInputError(f"{path}: unknown table format (expected .tsv, .csv, .xlsx or .jsonl)")


def read_text(path: str) -> str:
  """The file's text as UTF-8 (BOM dropped); BenchInputError naming the first bad byte."""
  with open(path, "rb") as handle:
    data = handle.read()
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as error:
    line = data.count(b"\n", 0, error.start) + 1
    raise BenchInputError(
      f"{path}: not UTF-8 text: byte 0x{data[error.start]:02x} at byte offset {error.start} "
      f"(line {line}) ({error.reason}); save the file as UTF-8"
    ) from None


def _read_xlsx(path: str) -> tuple[list[str], list[dict[str, Any]]]:
  """The first sheet of an .xlsx (header row, then data rows) as strings."""
  try:
    import openpyxl
  except ImportError:
    raise BenchInputError(f"{path}: reading .xlsx needs openpyxl (pip install openpyxl)") from None
  try:
    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
  except Exception as error:  # openpyxl raises zipfile, KeyError and XML errors on bad files
    raise BenchInputError(f"{path}: not a readable .xlsx file ({type(error).__name__})") from None
  try:
    sheet = workbook.worksheets[0]
    rows_iter = sheet.iter_rows(values_only=True)
    header = next(rows_iter, None) or ()
    columns = ["" if c is None else str(c).strip() for c in header]
    rows = []
    for row_number, values in enumerate(rows_iter, start=1):
      if values is None or all(v is None for v in values):
        continue
      row = {c: _xlsx_cell(v) for c, v in zip(columns, values) if c}
      row["_row"] = row_number
      rows.append(row)
  finally:
    workbook.close()
  return [c for c in columns if c], rows


def _xlsx_cell(value: Any) -> str:
  return "" if value is None else str(value)


def read_rows(path: str) -> tuple[list[str], list[dict[str, Any]]]:
  """Returns (column names, rows); each row has ``_row`` = its 1-based data row number."""
  if not os.path.exists(path):
    raise BenchInputError(f"{path}: file not found")
  fmt = table_format(path)
  rows: list[dict[str, Any]] = []
  if fmt == "xlsx":
    return _read_xlsx(path)
  text = read_text(path)
  if fmt == "jsonl":
    columns: list[str] = []
    for line_number, line in enumerate(text.split("\n"), start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as error:
        raise BenchInputError(f"{path}: line {line_number}: not valid JSON ({error.msg})") from None
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
  reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
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
