"""Bad files give one clear error or a counted skip, never a wrong number: non-UTF-8 text,
header-only files, rows without image or answer, VLMEvalKit .xlsx prediction files, a judge
whose every request fails, undefined kappa."""

import math

import numpy as np
import pytest

from medq_jax.bench import alignment, leaderboard, runner
from medq_jax.bench.io_files import read_rows, write_rows
from medq_jax.bench.items import load_mcq_items
from medq_jax.bench.judge_types import JudgeResponse
from medq_jax.bench.predictions import read_predictions
from medq_jax.bench.schema import BenchInputError


def _qa(index, answer="A", **extra):
  row = {"index": index, "question": "Is it clear?", "A": "Yes", "B": "No", "answer": answer}
  row.update(extra)
  return row


def test_non_utf8_tsv_names_file_byte_offset_and_line(tmp_path):
  path = tmp_path / "latin.tsv"
  head = b"index\tprediction\n1\tA\n"
  path.write_bytes(head + "2\tcaf\xe9\n".encode("latin-1"))
  with pytest.raises(BenchInputError) as error:
    read_rows(str(path))
  offset = len(head) + len("2\tcaf")
  assert str(error.value).startswith(f"{path}: not UTF-8 text: byte 0xe9 at byte offset {offset}")
  assert "(line 3)" in str(error.value)


def test_utf8_with_bom_reads(tmp_path):
  path = tmp_path / "bom.tsv"
  path.write_bytes("\ufeffindex\tprediction\n1\tB\n".encode())
  columns, rows = read_rows(str(path))
  assert columns == ["index", "prediction"] and rows[0]["prediction"] == "B"


def test_header_only_files_are_errors(write_qa, tmp_path):
  items = write_qa([], columns=["index", "image", "question", "A", "B", "answer"])
  with pytest.raises(BenchInputError, match=r"qa\.tsv: 0 items to score \(the file has no data"):
    load_mcq_items(items)
  predictions = tmp_path / "pred.tsv"
  predictions.write_text("index\tprediction\n")
  with pytest.raises(BenchInputError, match=r"pred\.tsv: 0 predictions"):
    read_predictions(str(predictions))


def test_rows_without_image_or_answer_are_skipped_and_counted(write_qa, tmp_path):
  path = write_qa([_qa("1"), _qa("2", answer=""), _qa("3", image=""), _qa("4", "B")])
  loaded = load_mcq_items(path)  # on_error="raise": absent values are no error
  assert [item.index for item in loaded.items] == ["1", "4"]
  assert [(e.index, e.reason) for e in loaded.exclusions] == [
    ("2", "missing answer (skipped)"),
    ("3", "missing image (skipped)"),
  ]
  write_rows(str(tmp_path / "p.tsv"), [{"index": i, "prediction": "A"} for i in "1234"])
  track = runner.score_perception(path, str(tmp_path / "p.tsv"), n_resamples=0)
  overall = track.perception_rows[0]
  assert (overall.n, overall.correct) == (2, 1)  # skipped rows are in no denominator
  assert sum(e.reason.endswith("(skipped)") for e in track.exclusions) == 2
  only_bad = write_qa([_qa("1", answer="")], name="bad.tsv")
  with pytest.raises(BenchInputError, match="0 items to score of 1 row"):
    load_mcq_items(only_bad)


def test_xlsx_predictions_as_vlmevalkit_writes_them(write_qa, tmp_path):
  openpyxl = pytest.importorskip("openpyxl")
  workbook = openpyxl.Workbook()
  sheet = workbook.active
  sheet.append(["index", "question", "answer", "prediction"])
  sheet.append([1, "Is it clear?", "A", "A. Yes"])
  sheet.append([2, "Is it clear?", "B", None])  # an empty cell: NaN to VLMEvalKit
  sheet.append([3, "Is it clear?", "A", "N/A"])
  workbook.save(tmp_path / "model_MedqbenchMCQ_test.xlsx")
  predictions, _ = read_predictions(str(tmp_path / "model_MedqbenchMCQ_test.xlsx"))
  assert predictions == {"1": "A. Yes", "2": "", "3": "N/A"}
  items = write_qa([_qa("1"), _qa("2", "B"), _qa("3")])
  track = runner.score_perception(items, str(tmp_path / "model_MedqbenchMCQ_test.xlsx"))
  outcomes = {o.index: o for o in track.perception_outcomes}
  assert outcomes["1"].correct and outcomes["1"].correct_vlmevalkit
  assert outcomes["2"].vlmevalkit_extracted is None and not outcomes["2"].correct_vlmevalkit
  # "N/A": NaN to VLMEvalKit (pandas), and no single option to ours
  assert outcomes["3"].vlmevalkit_extracted is None and outcomes["3"].letter is None
  broken = tmp_path / "broken.xlsx"
  broken.write_bytes(b"not a zip")
  with pytest.raises(BenchInputError, match=r"broken\.xlsx: not a readable \.xlsx file"):
    read_rows(str(broken))


class FailingJudge:
  name, description = "failing", "every request fails"

  def judge_all(self, requests):
    return [JudgeResponse(r, None, None, error="HTTP 500 after 2 retries") for r in requests]


def test_every_judge_request_failing_is_an_error(tmp_path, phantom):
  from data_pipeline.readers import encode_png_base64

  items = tmp_path / "desc.tsv"
  write_rows(str(items), [{"index": "1", "image": encode_png_base64(phantom), "description": "d"}])
  write_rows(str(tmp_path / "p.tsv"), [{"index": "1", "prediction": "a description"}])
  with pytest.raises(runner.BenchRunError, match=r"noref: all 4 judge requests failed.*HTTP 500"):
    runner.score_reasoning_track(str(items), "noref", FailingJudge(), str(tmp_path / "p.tsv"))


def test_undefined_kappa_has_a_reason():
  [constant] = alignment.align({"completeness": ([2, 2, 2], [2, 2, 2])})
  assert math.isnan(constant.kappa) and constant.accuracy == 1.0
  reason = alignment.kappa_undefined_reason(constant)
  assert "human scores are all [2]" in reason and "judge's all [2]" in reason
  [defined] = alignment.align({"completeness": ([0, 1, 2], [0, 1, 1])})
  assert not math.isnan(defined.kappa) and alignment.kappa_undefined_reason(defined) is None


def test_leaderboard_rows_beside_ours(tmp_path):
  published = leaderboard.load(leaderboard.BUILTIN)
  assert [name for name, _, _ in published["perception"]][:2] == ["GPT-5", "GPT-4o"]
  gpt5 = published["noref"][0]
  assert gpt5[0] == "GPT-5" and gpt5[2] == pytest.approx(5.679)
  assert gpt5[2] == pytest.approx(sum(gpt5[1]), abs=2e-3)  # overall = sum of the four
  columns, rows = leaderboard.table("noref", published["noref"], [("ours", [1, 1, 1, 1], 4.0, "x")])
  assert columns[:2] == ["rank", "Model"] and rows[-1][1] == "ours"  # 4.0 ranks last
  assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
  bad = tmp_path / "board.csv"
  bad.write_text("task,model,col1\nperception_test,X,1\n")
  with pytest.raises(BenchInputError, match=r"board\.csv: missing required column"):
    leaderboard.load(str(bad))
  bad.write_text("task,model,col1,col2,col3,col4,overall\nperception_test,X,high,1,1,,1\n")
  with pytest.raises(BenchInputError, match=r"row 1, field 'col1': 'high' is not a number"):
    leaderboard.load(str(bad))
  assert np.isfinite([v for v in published["perception"][0][1] if v is not None]).all()
