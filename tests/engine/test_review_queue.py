"""The review queue: JSONL/CSV export round trips (quotes, commas, newlines, non-ASCII), decisions
imported back, every bad row one error naming the line, and nothing imported on an error."""

import csv
import json

import pytest

from data_pipeline import atomic_files
from medq_jax.engine import review_queue as rq

ITEMS = [
  rq.ReviewItem("a1", "/data/a1.png", "Is there motion?", "B", "A"),
  rq.ReviewItem("a2", "/data/a 2.png", 'Describe, "briefly"', "Noise,\nmild", "Noise — moderate"),
  rq.ReviewItem("a3", "/data/a3.png", "How severe?", "C", "C"),
]


def _fill(path, decisions):
  """Writes the reviewer's decisions into an exported file, as a spreadsheet or editor would."""
  if path.suffix == ".jsonl":
    rows = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
  else:
    rows = list(csv.DictReader(path.open(encoding="utf-8", newline="")))
  for row in rows:
    row["decision"], row["edited_text"] = decisions.get(row["id"], ("", ""))
  if path.suffix == ".jsonl":
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
  else:
    with path.open("w", encoding="utf-8", newline="") as handle:
      writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(rows)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_round_trip(tmp_path, suffix):
  path = tmp_path / f"queue{suffix}"
  export = rq.export_jsonl if suffix == ".jsonl" else rq.export_csv
  assert export(ITEMS, str(path)) == 3
  if suffix == ".jsonl":
    rows = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
  else:
    rows = list(csv.DictReader(path.open(encoding="utf-8", newline="")))
  assert [{k: r[k] for k in rq.FIELDS} for r in rows] == [vars(i) for i in ITEMS]
  assert rq.import_decisions(str(path), [i.id for i in ITEMS]) == {}  # all pending
  _fill(path, {"a1": ("Accept", ""), "a2": ("EDIT", "  Mild noise.  "), "a3": ("reject", "x")})
  decisions = rq.import_decisions(str(path), [i.id for i in ITEMS])
  assert decisions == {
    "a1": rq.Decision("a1", "accept"),
    "a2": rq.Decision("a2", "edit", "Mild noise."),
    "a3": rq.Decision("a3", "reject"),
  }
  labels = [rq.final_label(i, decisions[i.id]) for i in ITEMS]
  assert labels == ["A", "Mild noise.", None]
  assert not list(tmp_path.glob(".tmp_*"))  # no temporary files left


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
@pytest.mark.parametrize(
  "decisions, message",
  [
    ({"a2": ("approve", "")}, r"unknown decision 'approve' \(expected Accept, Edit or Reject\)"),
    ({"a2": ("edit", "  ")}, "decision Edit for id 'a2' needs a non-empty edited_text"),
  ],
)
def test_bad_decisions_name_the_line(tmp_path, suffix, decisions, message):
  path = tmp_path / f"queue{suffix}"
  (rq.export_jsonl if suffix == ".jsonl" else rq.export_csv)(ITEMS, str(path))
  _fill(path, {"a1": ("accept", ""), **decisions})
  # JSONL: a2 is line 2. CSV: header is line 1 and a1 line 2, so a2 is line 3.
  line = 2 if suffix == ".jsonl" else 3
  with pytest.raises(ValueError, match=rf"queue{suffix}:{line}: {message}"):
    rq.import_decisions(str(path), [i.id for i in ITEMS])


def test_unknown_id_and_state_untouched(tmp_path):
  path = tmp_path / "queue.jsonl"
  rq.export_jsonl(ITEMS, str(path))
  _fill(path, {"a1": ("accept", "")})
  state = {"a1": rq.Decision("a1", "reject")}
  with pytest.raises(ValueError, match=r"queue.jsonl:1: unknown id 'a1'"):
    rq.import_decisions(str(path), ["a2", "a3"])
  assert state == {"a1": rq.Decision("a1", "reject")}
  merged = rq.merge(state, rq.import_decisions(str(path), ["a1", "a2", "a3"]))
  assert merged["a1"].decision == "accept" and state["a1"].decision == "reject"


def test_malformed_files(tmp_path):
  ids = ["a1", "a2"]
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"id": "a1", "decision": "accept"}\n{"id": "a2", "decision": \n', "utf-8")
  with pytest.raises(ValueError, match=r"bad.jsonl:2: not a JSON object"):
    rq.import_decisions(str(bad), ids)
  bad.write_text('{"id": "a1", "decision": "accept"}\n[1]\n', "utf-8")
  with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object"):
    rq.import_decisions(str(bad), ids)
  bad.write_text('{"id": "a1", "decision": "accept"}\n{"id": "a1", "decision": "reject"}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:2: id 'a1' is decided twice"):
    rq.import_decisions(str(bad), ids)
  bad.write_text('{"id": "a1", "decision": 3}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:1: decision must be text"):
    rq.import_decisions(str(bad), ids)
  bad.write_bytes(b'{"id": "a1", "decision": "acc\xffept"}\n')
  with pytest.raises(ValueError, match="not UTF-8"):
    rq.import_decisions(str(bad), ids)
  header = tmp_path / "bad.csv"
  header.write_text("id,verdict\na1,accept\n")
  with pytest.raises(ValueError, match=r"bad.csv:1: header lacks columns \['decision'\]"):
    rq.import_decisions(str(header), ids)
  with pytest.raises(ValueError, match="expected a .jsonl or .csv"):
    (tmp_path / "x.txt").write_text("")
    rq.import_decisions(str(tmp_path / "x.txt"), ids)
  with pytest.raises(ValueError, match="'a1' appears twice"):
    rq.export_csv([ITEMS[0], ITEMS[0]], str(tmp_path / "q.csv"))
  assert not (tmp_path / "q.csv").exists()


def test_a_failed_export_keeps_the_previous_file(tmp_path, monkeypatch):
  path = tmp_path / "queue.jsonl"
  rq.export_jsonl(ITEMS[:1], str(path))
  before = path.read_text("utf-8")

  def boom(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(atomic_files.os, "fsync", boom)
  with pytest.raises(OSError, match="disk full"):
    rq.export_jsonl(ITEMS, str(path))
  assert path.read_text("utf-8") == before
  assert not list(tmp_path.glob(".tmp_*"))
