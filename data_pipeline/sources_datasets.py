"""Adapters for real datasets given by path: IXI, AAPM-Mayo LDCT, UDPET and any image folder.

Expected layouts (also in docs/data_pipeline.md):
  IXI:       <root>/**/IXI<id>-<site>-<n>-{T1,T2,PD}.nii.gz      patient = IXI<id>
  AAPM-Mayo: <root>/<patient>/full_*/*.{IMA,dcm}  and  <root>/<patient>/quarter_*/*.{IMA,dcm}
             paired by slice location; the real quarter-dose slice is the low-quality input.
  UDPET:     <root>/<patient>/Full_dose/ (DICOM series) or Full_dose.nii.gz, and
             <root>/<patient>/1-<DRF> dose/ or 1-<DRF>_dose.nii.gz  (DRF 4, 10, 20, 50, 100)
  folder:    <root>/**/*.{nii,nii.gz,dcm,png,jpg}; patient = first folder under <root>
             (or the file stem for files directly in <root>).
"""

import glob
import os
import re
import warnings

import numpy as np

from data_pipeline import readers, slices

_DICOM_MODALITY = {"CT": "CT", "MR": "MRI", "PT": "PET"}


def read_dicom_series(directory, skipped):
  """Stacks the single-frame DICOM files of one folder -> (float32 [rows, cols, n], positions).

  Files are sorted by slice location; unreadable files are appended to `skipped`.
  """
  entries = []
  for path in sorted(glob.glob(os.path.join(directory, "*"))):
    if os.path.isdir(path):
      continue
    try:
      pixels, dataset = readers.read_dicom(path)
      readers.check_pixels(pixels[0], path)
      location = float(
        getattr(
          dataset,
          "SliceLocation",
          getattr(dataset, "ImagePositionPatient", [0, 0, len(entries)])[2],
        )
      )
      entries.append((location, pixels[0], path))
    except readers.BadInput as error:
      skipped.append({"path": error.path, "reason": error.reason})
  if not entries:
    raise readers.BadInput(directory, "no readable DICOM slices")
  shapes = {entry[1].shape for entry in entries}
  if len(shapes) != 1:
    raise readers.BadInput(directory, f"DICOM slices of different shapes {sorted(shapes)}")
  entries.sort(key=lambda entry: entry[0])
  return np.stack([e[1] for e in entries], axis=2), [round(e[0], 2) for e in entries]


def _paired_slices(
  high, low, *, key, modality, anatomy, patient_id, provenance, config, orientation, paired
):
  """RawSlices from co-registered high/low volumes [X, Y, Z]; both normalised with high's scale."""
  if high.shape != low.shape:
    raise readers.BadInput(provenance["file"], f"paired shapes differ {high.shape} vs {low.shape}")
  high_norm = slices.normalise_volume(high, modality, config, provenance["file"])
  if modality == "PET":
    scale = np.percentile(high[high > 0], config.pet_percentile)
    low_norm = np.clip(np.nan_to_num(low) / scale, 0, 1).astype(np.float32)
  else:
    low_norm = slices.normalise_volume(low, modality, config, provenance["file"])
  result = []
  for k in slices.slice_indices(
    high.shape[2],
    int(config.max_slices_per_volume),
    high_norm,
    float(config.min_foreground_fraction),
  ):
    pair = []
    for volume in (high_norm, low_norm):
      image = volume[:, :, k]
      image = np.rot90(image) if orientation == "nifti" else image
      pair.append(slices.resize_square(np.ascontiguousarray(image), int(config.image_size)))
    result.append(
      slices.RawSlice(
        key=f"{key}:{k}",
        image=pair[0],
        paired_low=pair[1],
        modality=modality,
        anatomy=anatomy,
        patient_id=patient_id,
        paired=paired,
        provenance=dict(provenance, slice=int(k)),
      )
    )
  return result


def ixi_slices(config, skipped):
  """IXI T1/T2/PD NIfTI volumes -> brain MRI RawSlices."""
  root = config.paths.ixi
  result = []
  for path in sorted(glob.glob(os.path.join(root, "**", "IXI*.nii*"), recursive=True)):
    match = re.match(r"(IXI\d+)-.*-(T1|T2|PD)\.nii(\.gz)?$", os.path.basename(path))
    if not match:
      skipped.append({"path": path, "reason": "name does not match IXI<id>-...-{T1,T2,PD}.nii.gz"})
      continue
    try:
      volume = readers.read_nifti(path)
      result += slices.volume_to_slices(
        volume,
        key=f"ixi:{os.path.basename(path)}",
        modality="MRI",
        anatomy="brain",
        patient_id=match.group(1),
        config=config,
        skipped=skipped,
        provenance={
          "dataset": "IXI",
          "file": os.path.relpath(path, root),
          "contrast": match.group(2),
        },
      )
    except readers.BadInput as error:
      skipped.append({"path": path, "reason": error.reason})
  return result


def _patient_dirs(root):
  """(patient id, directory) for each sub-directory of `root`, sorted (one per patient)."""
  for patient_dir in sorted(glob.glob(os.path.join(root, "*"))):
    if os.path.isdir(patient_dir):
      yield os.path.basename(patient_dir), patient_dir


def aapm_mayo_slices(config, skipped):
  """AAPM-Mayo full/quarter-dose pairs: the acquired quarter-dose slice is `paired_low`."""
  root = config.paths.aapm_mayo
  result = []
  for patient, patient_dir in _patient_dirs(root):
    fulls = sorted(glob.glob(os.path.join(patient_dir, "full*")))
    for full_dir in fulls:
      quarter_dir = os.path.join(patient_dir, os.path.basename(full_dir).replace("full", "quarter"))
      try:
        if not os.path.isdir(quarter_dir):
          raise readers.BadInput(full_dir, "no matching quarter-dose folder")
        high, high_pos = read_dicom_series(full_dir, skipped)
        low, low_pos = read_dicom_series(quarter_dir, skipped)
        common = sorted(set(high_pos) & set(low_pos))
        if not common:
          raise readers.BadInput(full_dir, "no slice locations shared by full and quarter dose")
        high = high[:, :, [high_pos.index(p) for p in common]]
        low = low[:, :, [low_pos.index(p) for p in common]]
        result += _paired_slices(
          high,
          low,
          key=f"aapm:{patient}:{os.path.basename(full_dir)}",
          modality="CT",
          anatomy="abdomen",
          patient_id=patient,
          config=config,
          orientation="dicom",
          provenance={"dataset": "AAPM-Mayo LDCT", "file": os.path.relpath(full_dir, root)},
          paired={
            "task": "ldct",
            "severity": config.paired_severity.aapm_quarter_dose,
            "params": {
              "acquired": True,
              "dose_fraction": 0.25,
              "low_file": os.path.relpath(quarter_dir, root),
            },
          },
        )
      except readers.BadInput as error:
        skipped.append({"path": error.path, "reason": error.reason})
  return result


def _read_entry(path, skipped):
  """A DICOM series folder or a NIfTI file -> (volume [X, Y, Z], orientation)."""
  if os.path.isdir(path):
    return read_dicom_series(path, skipped)[0], "dicom"
  return readers.read_nifti(path), "nifti"


def udpet_severity(drf, config):
  """Dose reduction factor -> severity by the thresholds in config.paired_severity."""
  if drf <= config.paired_severity.udpet_drf_mild_max:
    return "mild"
  return "moderate" if drf <= config.paired_severity.udpet_drf_moderate_max else "severe"


def udpet_slices(config, skipped):
  """UDPET full-dose / low-dose pairs (acquired low-count PET, nothing simulated)."""
  root = config.paths.udpet
  result = []
  for patient, patient_dir in _patient_dirs(root):
    entries = sorted(glob.glob(os.path.join(patient_dir, "*")))
    fulls = [e for e in entries if re.search(r"full", os.path.basename(e), re.I)]
    if not fulls:
      skipped.append({"path": patient_dir, "reason": "no Full_dose entry"})
      continue
    try:
      high, orientation = _read_entry(fulls[0], skipped)
    except readers.BadInput as error:
      skipped.append({"path": error.path, "reason": error.reason})
      continue
    for entry in entries:
      match = re.match(r"1-(\d+)[ _]?dose", os.path.basename(entry), re.I)
      if not match:
        continue
      drf = float(match.group(1))
      try:
        low, _ = _read_entry(entry, skipped)
        result += _paired_slices(
          high,
          low,
          key=f"udpet:{patient}:drf{int(drf)}",
          modality="PET",
          anatomy="whole body",
          patient_id=patient,
          config=config,
          orientation=orientation,
          provenance={"dataset": "UDPET", "file": os.path.relpath(fulls[0], root)},
          paired={
            "task": "pet_lowcount",
            "severity": udpet_severity(drf, config),
            "params": {
              "acquired": True,
              "dose_reduction": drf,
              "low_file": os.path.relpath(entry, root),
            },
          },
        )
      except readers.BadInput as error:
        skipped.append({"path": error.path, "reason": error.reason})
  return result


_EXTENSIONS = (".nii", ".nii.gz", ".dcm", ".ima", ".png", ".jpg", ".jpeg", ".tif", ".tiff")


def folder_slices(config, skipped):
  """Any folder of NIfTI/DICOM/PNG files; modality from DICOM tags or config.folder_modality."""
  root = config.paths.folder
  result = []
  for path in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
    if os.path.isdir(path):
      continue
    if not path.lower().endswith(_EXTENSIONS):
      skipped.append({"path": path, "reason": "unknown file type"})
      continue
    relative = os.path.relpath(path, root)
    parts = relative.split(os.sep)
    patient = parts[0] if len(parts) > 1 else parts[0].split(".")[0]
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        volume, kind, dataset = readers.read_any(path)
      modality = _DICOM_MODALITY.get(getattr(dataset, "Modality", ""), config.folder_modality)
      result += slices.volume_to_slices(
        volume,
        key=f"folder:{relative}",
        modality=modality,
        anatomy=config.folder_anatomy,
        patient_id=f"folder/{patient}",
        config=config,
        skipped=skipped,
        orientation="nifti" if kind == "nifti" else "dicom",
        provenance={"dataset": "folder", "file": relative},
      )
    except readers.BadInput as error:
      skipped.append({"path": path, "reason": error.reason})
  return result
