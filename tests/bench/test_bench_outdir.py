"""`medq-bench` end to end on bad input and reused output directories: one FATAL line and a
non-zero exit, or a manifest of exactly what this run wrote."""

import json
import os
import socket
import subprocess
import sys

import pytest

from data_pipeline.readers import encode_png_base64
from medq_jax.bench import out_dir
from medq_jax.bench.io_files import write_rows
from medq_jax.bench.schema import BenchInputError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = "Severe noise. Overall, the quality of this image is reject."


def _bench(*args, env=None):
  return subprocess.run(
    [sys.executable, "-m", "launch.bench", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, PYTHONPATH=REPO, **(env or {})),
  )


@pytest.fixture
def files(tmp_path, phantom):
  image = encode_png_base64(phantom)
  qa = [
    {"index": str(i), "image": image, "question": "Clear?", "A": "Yes", "B": "No", "answer": a}
    for i, a in enumerate("ABAB")
  ]
  write_rows(str(tmp_path / "qa.tsv"), qa)
  write_rows(
    str(tmp_path / "qa_pred.tsv"), [{"index": str(i), "prediction": "A"} for i in range(4)]
  )
  write_rows(
    str(tmp_path / "desc.tsv"),
    [{"index": str(i), "image": image, "description": GOLDEN} for i in range(2)],
  )
  write_rows(str(tmp_path / "desc_pred.tsv"), [{"index": "0", "prediction": GOLDEN}])
  return tmp_path


def _manifest(path):
  return json.loads((path / "manifest.json").read_text())


def test_rerun_clears_earlier_outputs_and_lists_its_own(files):
  out = files / "out"
  qa = [f"--config.qa_items={files / 'qa.tsv'}", f"--config.qa_predictions={files / 'qa_pred.tsv'}"]
  noref = [
    f"--config.noref_items={files / 'desc.tsv'}",
    f"--config.noref_predictions={files / 'desc_pred.tsv'}",
  ]
  first = _bench(*qa, *noref, "--config.bootstrap=50", f"--out_dir={out}")
  assert first.returncode == 0, first.stderr[-2000:]
  assert (out / "tables" / "reasoning_noref.csv").exists()
  second = _bench(*qa, "--config.bootstrap=50", f"--out_dir={out}")  # perception only
  assert second.returncode == 0, second.stderr[-2000:]
  assert not (out / "tables" / "reasoning_noref.csv").exists()  # the earlier run's, removed
  present = sorted(
    os.path.relpath(os.path.join(root, name), out)
    for root, _, names in os.walk(out)
    for name in names
  )
  listed = [entry["path"] for entry in _manifest(out)["files"]]
  cache = [p for p in present if p.startswith("judge_cache.sqlite")]  # kept for resuming
  assert sorted(listed + ["manifest.json"]) == sorted(set(present) - set(cache))
  assert "tables/perception_disagreements.csv" in listed
  assert "tables/leaderboard_perception.csv" in listed
  # a file no run of ours wrote: refused (test_prepare_refuses_unknown_files), kept and named
  # with --overwrite
  (out / "notes.txt").write_text("mine")
  forced = _bench(*qa, "--config.bootstrap=50", "--overwrite", f"--out_dir={out}")
  assert forced.returncode == 0 and (out / "notes.txt").read_text() == "mine"
  assert _manifest(out)["not_written_by_this_run"] == ["notes.txt"]


def test_generate_refuses_a_non_empty_directory(tmp_path):
  (tmp_path / "medqbench_QA_test.tsv").write_text("old items\n")
  refused = _bench("--config=configs/bench.py:mode=generate", f"--out_dir={tmp_path}")
  assert (
    refused.returncode == 1 and "not empty" in refused.stderr and "--overwrite" in refused.stderr
  )
  assert (tmp_path / "medqbench_QA_test.tsv").read_text() == "old items\n"
  # --overwrite (the item generation itself is tested in test_bench_launch.py)
  run = out_dir.prepare(str(tmp_path), "generate", overwrite=True)
  assert os.listdir(tmp_path) == [] and run.before == {}


def test_header_only_input_exits_1(files):
  (files / "empty.tsv").write_text("index\timage\tquestion\tA\tB\tanswer\n")
  result = _bench(
    f"--config.qa_items={files / 'empty.tsv'}",
    f"--config.qa_predictions={files / 'qa_pred.tsv'}",
    f"--out_dir={files / 'o1'}",
  )
  assert result.returncode == 1 and "empty.tsv: 0 items to score" in result.stderr
  assert "Traceback" not in result.stderr and "FATAL medq-bench: " in result.stderr
  # non-UTF-8 input: the same FATAL path (message tested in test_bench_bad_files.py)


def test_every_judge_request_failing_exits_1(files):
  with socket.socket() as probe:  # a port nobody listens on: every request fails to connect
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  result = _bench(
    "--config=configs/bench.py:judge=api",
    f"--config.noref_items={files / 'desc.tsv'}",
    f"--config.noref_predictions={files / 'desc_pred.tsv'}",
    "--config.judge.max_retries=0",
    "--config.judge.timeout_s=2",
    f"--out_dir={files / 'o3'}",
    env={"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1", "OPENAI_API_KEY": "sk-test"},
  )
  assert result.returncode == 1, result.stderr[-2000:]
  assert "noref: all 4 judge requests failed" in result.stderr


def test_alignment_json_is_strict_json_when_kappa_is_undefined(tmp_path):
  rows = ["index,dimension,human_score,judge_score"]
  rows += [f"{i},completeness,2,2" for i in range(3)]  # both raters constant: kappa undefined
  rows += [f"{i},preciseness,{i % 3},{(i + 1) % 3}" for i in range(6)]
  (tmp_path / "human.csv").write_text("\n".join(rows) + "\n")
  result = _bench(
    "--config=configs/bench.py:mode=align",
    f"--config.human_scores={tmp_path / 'human.csv'}",
    f"--out_dir={tmp_path / 'align'}",
  )
  assert result.returncode == 0, result.stderr[-2000:]

  def no_nan(token):
    raise AssertionError(f"alignment.json holds {token}")

  records = json.loads((tmp_path / "align" / "alignment.json").read_text(), parse_constant=no_nan)
  by_dimension = {r["dimension"]: r for r in records}
  assert by_dimension["completeness"]["kappa"] is None
  assert "expected disagreement is 0" in by_dimension["completeness"]["kappa_undefined_reason"]
  assert by_dimension["preciseness"]["kappa"] is not None
  assert by_dimension["preciseness"]["kappa_undefined_reason"] is None


def test_prepare_keeps_inputs_and_cache(tmp_path):
  (tmp_path / "report.md").write_text("old")
  (tmp_path / "judge_cache.sqlite").write_text("cache")
  (tmp_path / "medqbench_QA_test.tsv").write_text("items")
  started = out_dir.prepare(str(tmp_path), "score", [str(tmp_path / "medqbench_QA_test.tsv")])
  assert sorted(os.listdir(tmp_path)) == ["judge_cache.sqlite", "medqbench_QA_test.tsv"]
  (tmp_path / "report.md").write_text("new")
  out_dir.finish(str(tmp_path), "score", started)
  manifest = _manifest(tmp_path)
  assert [f["path"] for f in manifest["files"]] == ["report.md"]
  assert sorted(manifest["not_written_by_this_run"]) == [
    "judge_cache.sqlite",
    "medqbench_QA_test.tsv",
  ]
  with pytest.raises(BenchInputError, match="not empty"):
    out_dir.prepare(str(tmp_path), "generate")


def test_prepare_refuses_unknown_files(tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  (tmp_path / "report.md").write_text("old")
  with pytest.raises(BenchInputError, match=r"holds 1 file\(s\) that no earlier medq-bench run"):
    out_dir.prepare(str(tmp_path), "score")
  assert sorted(os.listdir(tmp_path)) == ["notes.txt", "report.md"]  # nothing deleted
  out_dir.prepare(str(tmp_path), "score", overwrite=True)
  assert os.listdir(tmp_path) == ["notes.txt"]
