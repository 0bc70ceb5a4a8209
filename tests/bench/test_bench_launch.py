"""launch/bench.py end to end on generated items, offline judge, heuristic model; settings from
configs/bench.py with --config.* overrides."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _bench(*args, check=True):
  result = subprocess.run(
    [sys.executable, "-m", "launch.bench", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, PYTHONPATH=REPO),
  )
  if check:
    assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  root = tmp_path_factory.mktemp("demo")
  _bench("--config=configs/bench.py:mode=generate", f"--out_dir={root}")
  report = root / "report"
  _bench(
    "--config=configs/bench.py:mode=score,judge=offline",
    f"--config.items_dir={root}",
    "--config.model=heuristic",
    "--config.bootstrap=200",
    f"--out_dir={report}",
  )
  return root, report


def test_generate_and_score(demo):
  root, report = demo
  for name in (
    "medqbench_QA_test.tsv",
    "medqbench_description_test.tsv",
    "medqbench_paired_description_test.tsv",
  ):
    assert (root / name).exists()
  payload = json.loads((report / "report.json").read_text())
  assert payload["judge"]["name"] == "offline-rule-judge-v1"
  assert "NOT an LLM judge" in payload["judge"]["description"]
  assert "offline-rule-judge-v1" in (report / "report.md").read_text()
  overall = next(r for r in payload["perception"] if r["group"] == "overall")
  assert overall["n"] == 150 and 0 <= overall["accuracy"] <= 1
  assert overall["ci_low"] <= overall["accuracy"] <= overall["ci_high"]
  paired = payload["reasoning"]["paired"]
  assert [row["group"] for row in paired] == ["overall", "fine", "coarse"]
  assert paired[0]["overall"] == pytest.approx(sum(paired[0]["means"].values()))
  for table in (
    "table1",
    "perception_breakdown",
    "perception_by_modality",
    "reasoning_noref",
    "reasoning_paired",
  ):
    assert (report / "tables" / f"{table}.csv").exists()
  header = (report / "tables" / "table1.csv").read_text().splitlines()[0]
  assert header.startswith("Model,Yes-or-No,What,How")
  for plot in (
    "perception_by_modality",
    "reasoning_noref_dimensions",
    "reasoning_paired_dimensions",
  ):
    with Image.open(report / "plots" / f"{plot}.png") as image:
      assert image.size[0] > 300 and np.asarray(image).std() > 5  # a real drawing, not blank


def test_rescoring_the_written_predictions_file(demo, tmp_path):
  root, report = demo
  result = _bench(
    f"--config.qa_items={root / 'medqbench_QA_test.tsv'}",
    f"--config.qa_predictions={report / 'predictions_perception.jsonl'}",
    "--config.bootstrap=200",
    f"--out_dir={tmp_path}",
  )
  first = json.loads((report / "report.json").read_text())["table1"]
  second = json.loads((tmp_path / "report.json").read_text())["table1"]
  assert first["Overall (perception)"] == second["Overall (perception)"]
  assert "predictions_perception" in result.stdout


def test_align_mode(demo, tmp_path):
  _, report = demo
  records = [
    json.loads(line) for line in (report / "items" / "noref_items.jsonl").read_text().splitlines()
  ]
  rows = ["index,dimension,human_score"]
  for record in records:
    for dimension, value in record["scores"].items():
      rows.append(f"{record['index']},{dimension},{int(round(value))}")
  (tmp_path / "human.csv").write_text("\n".join(rows) + "\n")
  _bench(
    "--config=configs/bench.py:mode=align",
    f"--config.human_scores={tmp_path / 'human.csv'}",
    f"--config.judge_scores={report / 'items' / 'noref_items.jsonl'}",
    f"--out_dir={tmp_path / 'align'}",
  )
  results = json.loads((tmp_path / "align" / "alignment.json").read_text())
  assert {r["dimension"] for r in results} == {
    "completeness",
    "preciseness",
    "consistency",
    "quality_accuracy",
  }
  assert all(r["accuracy"] == 1.0 for r in results)  # humans copied the judge
  assert (tmp_path / "align" / "confusion_completeness.png").exists()


def test_checkpoint_mode_names_a_missing_workdir(demo, tmp_path):
  root, _ = demo
  result = _bench(
    f"--config.items_dir={root}",
    "--config.checkpoint=/nonexistent/ckpt",
    "--model_config=configs/medq_uni.py:size=tiny,stage=2",
    f"--out_dir={tmp_path}",
    check=False,
  )
  assert result.returncode != 0
  assert "/nonexistent/ckpt: no such directory" in result.stderr


def test_checkpoint_without_model_config_is_a_usage_error(demo, tmp_path):
  root, _ = demo
  result = _bench(
    f"--config.items_dir={root}",
    "--config.checkpoint=/nonexistent/ckpt",
    f"--out_dir={tmp_path}",
    check=False,
  )
  assert result.returncode != 0
  assert "--model_config is required with --config.checkpoint" in result.stderr


def test_bad_settings_fail_naming_the_key(tmp_path):
  misspelt = _bench("--config.judge.rouns=2", f"--out_dir={tmp_path}", check=False)
  assert misspelt.returncode != 0
  assert (
    "--config.judge.rouns: config.judge has no key 'rouns'; valid keys: cache_path, "
    "concurrency, kind, max_retries, message_style, rounds, score_mode, timeout_s"
    in misspelt.stderr
  )
  assert "Traceback" not in misspelt.stderr
  bad_mode = _bench("--config.mode=grade", f"--out_dir={tmp_path}", check=False)
  assert bad_mode.returncode != 0
  assert (
    "config.mode='grade': expected one of ('generate', 'score', 'align', 'restoration')"
    in bad_mode.stderr
  )
  bad_arg = _bench("--config=configs/bench.py:mode=grade", f"--out_dir={tmp_path}", check=False)
  assert bad_arg.returncode != 0 and "config arg: mode must be one of" in bad_arg.stderr


def test_bad_items_fail_with_row_and_field(tmp_path, phantom):
  from data_pipeline.readers import encode_png_base64

  (tmp_path / "qa.tsv").write_text(
    "index\timage\tquestion\tA\tB\tanswer\n1\tQUJD\tQ?\tYes\tNo\tA\n"
    f"2\t{encode_png_base64(phantom)}\tQ?\tYes\tNo\tB\n"
  )
  (tmp_path / "pred.tsv").write_text("index\tprediction\n1\tA\n2\tB\n")
  files = [
    f"--config.qa_items={tmp_path / 'qa.tsv'}",
    f"--config.qa_predictions={tmp_path / 'pred.tsv'}",
  ]
  result = _bench(*files, f"--out_dir={tmp_path / 'out'}", check=False)
  assert result.returncode != 0
  assert "qa.tsv: row 1 (index '1'), field 'image'" in result.stderr
  assert "Traceback" not in result.stderr
  skipped = _bench(*files, "--config.skip_bad_rows", f"--out_dir={tmp_path / 'out2'}")
  assert "bad input: image | 1" in skipped.stdout


def test_restoration_mode(tmp_path, phantom):
  rng = np.random.default_rng(0)
  restored = np.stack(
    [np.clip(phantom + rng.normal(0, 0.03, phantom.shape), 0, 1) for _ in range(3)]
  )
  np.savez(
    tmp_path / "r.npz",
    tasks=np.array(["ldct", "ldct", "pet_lowcount"]),
    restored=restored,
    reference=np.stack([phantom] * 3),
  )
  result = _bench(
    "--config=configs/bench.py:mode=restoration",
    f"--config.restoration_npz={tmp_path / 'r.npz'}",
    f"--out_dir={tmp_path / 'o'}",
  )
  assert "| ldct | 2 |" in result.stdout and (tmp_path / "o" / "restoration.csv").exists()
