"""medq-sample's CT: six distinct real patients, and the GDCM fallback decoder against pydicom."""

import numpy as np
import pydicom
import pytest

from data_pipeline import readers, sources_sample


def _ct_entries():
  return [entry for entry in sources_sample._dicom_entries() if entry[2] == "CT"]


def test_ct_files_are_real_ct_of_six_patients():
  patients = set()
  for _, path, _, _, _ in _ct_entries():
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert header.Modality == "CT" and header.SOPClassUID.name.startswith(
      ("CT Image", "Enhanced CT")
    ), path
    patients.add(header.PatientID)
  assert len(patients) == 6, patients


@pytest.mark.parametrize("entry", _ct_entries(), ids=lambda e: e[1].rsplit("/", 1)[-1])
def test_ct_files_decode_to_hounsfield_units(entry):
  pixels, _ = sources_sample.read_dicom(entry[1])
  assert pixels.ndim == 3 and pixels.shape[1:] in ((128, 128), (512, 512))
  # Air or lung (below -800 HU) and soft tissue (-100..100 HU): what a CT in HU looks like.
  assert pixels.min() <= -800
  assert np.mean((pixels > -100) & (pixels < 100)) > 0.05


def test_gdcm_fallback_equals_pydicom(monkeypatch):
  """Force the fallback on a file pydicom decodes: GDCM (SimpleITK) gives the same HU."""
  path = _ct_entries()[0][1]
  expected, _ = readers.read_dicom(path)

  def undecodable(path):
    raise readers.BadInput(path, "undecodable DICOM pixels (forced)")

  monkeypatch.setattr(readers, "read_dicom", undecodable)
  pixels, header = sources_sample.read_dicom(path)
  np.testing.assert_array_equal(pixels, expected)
  assert header.PatientID == "1CT1"


def test_undecodable_by_both_names_both(monkeypatch, tmp_path):
  def undecodable(path):
    raise readers.BadInput(path, "undecodable DICOM pixels (forced)")

  monkeypatch.setattr(readers, "read_dicom", undecodable)
  path = tmp_path / "not_dicom.dcm"
  path.write_bytes(b"\0" * 64)
  with pytest.raises(readers.BadInput, match=r"undecodable DICOM pixels \(forced\); GDCM: "):
    sources_sample.read_dicom(str(path))
