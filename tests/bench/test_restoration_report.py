"""The restoration report on synthetic cases, against scikit-image computed independently."""

import csv
import json
import os

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from medq_jax.bench import panels
from medq_jax.bench.classical_baselines import BASELINES
from medq_jax.bench.judge_offline import NAME as OFFLINE_JUDGE
from medq_jax.bench.judge_offline import score_request
from medq_jax.bench.judge_types import JudgeRequest
from medq_jax.bench.prompts import DIMENSIONS
from medq_jax.bench.restoration_report import (
  RestorationCase,
  evaluate_cases,
  write_restoration_report,
)

MODALITY = {
  "ldct": "CT",
  "mri_undersampling": "MRI",
  "mri_motion": "MRI",
  "mri_noise": "MRI",
  "pet_lowcount": "PET",
}
NOISE = {"mild": 0.03, "moderate": 0.07, "severe": 0.15}
LABEL = {"mild": "good", "moderate": "usable", "severe": "reject"}


def _describe(modality, severity):
  return (
    f"This is a {modality} image. The image shows {severity} noise that reduces clarity. "
    f"Overall, the quality of this image is {LABEL[severity]}."
  )


def _case(task, severity, reference, seed, vae=True):
  rng = np.random.default_rng(seed)
  degraded = np.clip(reference + rng.normal(0, NOISE[severity], reference.shape), 0, 1)
  restored = np.clip(reference + rng.normal(0, NOISE[severity] / 3, reference.shape), 0, 1)
  modality = MODALITY[task]
  return RestorationCase(
    id=f"{modality.lower()}:p{seed}:{task}:{severity}",
    modality=modality,
    task=task,
    severity=severity,
    degraded=degraded.astype(np.float32),
    restored=restored.astype(np.float32),
    reference=reference,
    vae_reconstruction=np.clip(reference + rng.normal(0, 0.01, reference.shape), 0, 1)
    if vae
    else None,
    # the generated description is exact for odd seeds and says "mild" for even ones
    description=_describe(modality, severity if seed % 2 else "mild"),
    reference_description=_describe(modality, severity),
    extra={"seed": seed},
  )


@pytest.fixture(scope="module")
def cases(phantom, camera):
  out, seed = [], 0
  for task in MODALITY:
    for severity in ("mild", "moderate", "severe"):
      seed += 1
      if task == "mri_noise" and severity == "moderate":
        continue  # 14 cases; mri_noise/moderate is a missing cell
      reference = phantom if MODALITY[task] != "MRI" else camera
      out.append(_case(task, severity, reference, seed, vae=task != "ldct"))
  return out


@pytest.fixture(scope="module")
def report(cases, tmp_path_factory):
  out_dir = str(tmp_path_factory.mktemp("report"))
  written = write_restoration_report(
    cases, out_dir, title="Synthetic restoration", run_info={"checkpoint": "none"}, panel_count=6
  )
  return out_dir, written


def _read(directory, name):
  with open(os.path.join(directory, name), encoding="utf-8") as handle:
    return handle.read()


def _ssim(reference, image):
  return structural_similarity(
    reference.astype(np.float64),
    image.astype(np.float64),
    data_range=1.0,
    gaussian_weights=True,
    sigma=1.5,
    use_sample_covariance=False,
  )


def test_every_file_written_and_panels_are_pngs(report):
  out_dir, written = report
  for name in ("report.md", "restoration.csv", "restoration_summary.csv", "restoration.json"):
    assert os.path.getsize(os.path.join(out_dir, name)) > 0
  pngs = sorted(os.listdir(os.path.join(out_dir, "panels")))
  assert len(pngs) == 6 and sum(k.startswith("panel_") for k in written) == 6
  import matplotlib.image

  for name in pngs:
    path = os.path.join(out_dir, "panels", name)
    with open(path, "rb") as handle:
      assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 800
  md = _read(out_dir, "report.md")
  for text in (
    "# Synthetic restoration",
    "checkpoint: `none`",
    "CT denoising PSNR",
    "### MRI restoration",
    OFFLINE_JUDGE,
    "sigma=1.5",
    "[0, 1]",
    "nl_means(h=sigma_est)",
    "Bounds (PSNR means): CT denoising: identity only",
    "MedQ-UNI (paper Table 1, its data)",
    "panels/00_",
  ):
    assert text in md, text


def test_csv_equals_scikit_image(cases, report):
  out_dir, _ = report
  with open(os.path.join(out_dir, "restoration.csv"), newline="") as handle:
    rows = list(csv.DictReader(handle))
  by_id = {c.id: c for c in cases}
  n_vae = sum(c.vae_reconstruction is not None for c in cases)
  assert len(rows) == 3 * len(cases) + n_vae
  for row in rows:
    case = by_id[row["case_id"]]
    reference = case.reference.astype(np.float64)
    image = {
      "identity": case.degraded,
      "model": case.restored,
      "vae_ceiling": case.vae_reconstruction,
      "classical": BASELINES[case.task][1](case.degraded.astype(np.float64), 1.0)
      if row["method"] == "classical"
      else None,
    }[row["method"]].astype(np.float64)
    assert float(row["psnr_db"]) == pytest.approx(
      peak_signal_noise_ratio(reference, image, data_range=1.0), rel=1e-12
    )
    assert float(row["ssim"]) == pytest.approx(_ssim(reference, image), rel=1e-12)
    assert (row["modality"], row["task"], row["severity"]) == (
      case.modality,
      case.task,
      case.severity,
    )


def _row(tables, group, task, severity):
  return next(r for r in tables[group] if r["task"] == task and r["severity"] == severity)


def test_cells_count_and_aggregate_right(cases, report):
  out_dir, _ = report
  payload = json.loads(_read(out_dir, "restoration.json"))
  tables = payload["tables"]
  mri = _row(tables, "MRI restoration", "all", "all")["cells"]
  assert mri["model"]["psnr"]["n"] == 8 and mri["vae_ceiling"]["psnr"]["n"] == 8
  ct = _row(tables, "CT denoising", "ldct", "all")["cells"]
  assert ct["identity"]["ssim"]["n"] == 3 and ct["vae_ceiling"]["psnr"]["n"] == 0
  assert ct["vae_ceiling"]["psnr"]["mean"] is None  # n=0: no number
  missing = _row(tables, "MRI restoration", "mri_noise", "moderate")["cells"]
  assert all(missing[m]["psnr"]["n"] == 0 for m in missing)
  # population std and mean against numpy over the per-case values
  pet = [c for c in cases if c.task == "pet_lowcount"]
  values = [
    peak_signal_noise_ratio(c.reference.astype(float), c.restored.astype(float), data_range=1)
    for c in pet
  ]
  cell = payload["headline"]["PET denoising"]["cells"]["model"]["psnr"]
  assert cell["n"] == 3
  assert cell["mean"] == pytest.approx(np.mean(values), rel=1e-12)
  assert cell["std"] == pytest.approx(np.std(values), rel=1e-12)
  with open(os.path.join(out_dir, "restoration_summary.csv"), newline="") as handle:
    summary = list(csv.DictReader(handle))
  (line,) = [
    r
    for r in summary
    if (r["task"], r["severity"], r["method"]) == ("pet_lowcount", "all", "model")
  ]
  assert int(line["count"]) == 3 and float(line["psnr_mean"]) == pytest.approx(np.mean(values))
  (empty,) = [
    r
    for r in summary
    if (r["task"], r["severity"], r["method"]) == ("mri_noise", "moderate", "model")
  ]
  assert empty["count"] == "0" and empty["psnr_mean"] == ""
  # per-case metrics are in the JSON too
  first = payload["cases"][0]
  assert set(first["metrics"]) == {"identity", "classical", "model"}  # ldct: no VAE given
  assert first["extra"] == {"seed": 1}
  md = _read(out_dir, "report.md")
  assert "| mri_noise / moderate | -- (n=0) |" in md
  assert "identity only (no VAE ceiling given)" in md


def test_description_scores_with_offline_judge(cases, report):
  out_dir, _ = report
  payload = json.loads(_read(out_dir, "restoration.json"))
  assert payload["judge"]["name"] == OFFLINE_JUDGE
  summaries = {s["group"]: s for s in payload["descriptions"]["summaries"]}
  assert set(summaries) == {"overall"} | set(MODALITY)
  expected = {
    c.id: {
      d: float(
        score_request(JudgeRequest(c.id, "noref", d, 0, c.description, c.reference_description))
      )
      for d in DIMENSIONS
    }
    for c in cases
  }
  for case in payload["cases"]:
    assert case["description_scores"] == expected[case["id"]], case["id"]
  for task in MODALITY:
    ids = [c.id for c in cases if c.task == task]
    for d in DIMENSIONS:
      mean = np.mean([expected[i][d] for i in ids])
      assert summaries[task]["means"][d] == pytest.approx(mean)
  assert summaries["overall"]["n_items"] == 14
  # the exact descriptions (odd seeds) beat the ones that always say "mild"
  exact = [sum(expected[c.id].values()) for c in cases if c.extra["seed"] % 2]
  wrong = [sum(expected[c.id].values()) for c in cases if c.extra["seed"] % 2 == 0]
  assert np.mean(exact) > np.mean(wrong)
  assert "| ldct | 3 |" in _read(out_dir, "report.md")


def test_missing_task_is_n0_and_dashes(cases, tmp_path):
  kept = [c for c in cases if c.task != "pet_lowcount"]
  write_restoration_report(kept, str(tmp_path), title="t", run_info={}, panel_count=2)
  payload = json.loads(_read(tmp_path, "restoration.json"))
  pet = payload["headline"]["PET denoising"]
  assert all(pet["cells"][m][k]["n"] == 0 for m in pet["cells"] for k in ("psnr", "ssim"))
  assert pet["bound"] == "no cases"
  md = (tmp_path / "report.md").read_text(encoding="utf-8")
  headline = md.split("## Full tables")[0]
  model_line = next(line for line in headline.splitlines() if line.startswith("| Model"))
  assert model_line.rstrip(" |").endswith("-- (n=0) | -- (n=0)")


def test_vae_limited_rows_are_flagged(phantom, tmp_path):
  case = _case("pet_lowcount", "mild", phantom, 3)
  blurry = np.clip(phantom * 0.7 + 0.1, 0, 1)  # a ceiling far below the identity
  bad = RestorationCase(**{**case.__dict__, "vae_reconstruction": blurry})
  (row,) = [r for r in evaluate_cases([bad]) if r.method == "vae_ceiling"]
  assert row.psnr < peak_signal_noise_ratio(phantom, case.degraded, data_range=1.0)
  write_restoration_report([bad], str(tmp_path), title="t", run_info={}, panel_count=0)
  md = (tmp_path / "report.md").read_text(encoding="utf-8")
  assert "VAE-LIMITED: ceiling" in md and "model above ceiling" in md


def test_bad_input_errors_name_the_case(cases, tmp_path):
  with pytest.raises(ValueError, match="no cases to evaluate"):
    write_restoration_report([], str(tmp_path), title="t", run_info={})
  case = cases[0]
  nan = case.restored.copy()
  nan[5, 5] = np.nan
  bad = RestorationCase(**{**case.__dict__, "restored": nan})
  with pytest.raises(ValueError, match=rf"case {case.id} field 'restored': 1 NaN/Inf"):
    write_restoration_report([cases[1], bad], str(tmp_path / "o"), title="t", run_info={})
  assert not (tmp_path / "o").exists()  # nothing is written before every case checks out
  shifted = RestorationCase(**{**case.__dict__, "restored": case.restored * 1.5 - 0.3})
  with pytest.raises(ValueError, match=rf"case {case.id} field 'restored': values in \[-0.3"):
    evaluate_cases([shifted])
  small = RestorationCase(**{**case.__dict__, "vae_reconstruction": case.reference[:32]})
  with pytest.raises(ValueError, match=rf"case {case.id} field 'vae_reconstruction': shape"):
    evaluate_cases([small])
  with pytest.raises(ValueError, match="appears twice"):
    evaluate_cases([case, case])


def test_panel_sample_is_deterministic_and_spread(cases):
  first = panels.select_cases(cases, 5, seed=0, order=list(MODALITY))
  assert [c.id for c in first] == [
    c.id for c in panels.select_cases(cases[::-1], 5, 0, list(MODALITY))
  ]
  assert len({c.task for c in first}) == 5 and len({c.severity for c in first}) == 3
  assert len(panels.select_cases(cases, 100)) == len(cases)
