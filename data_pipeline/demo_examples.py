"""A few examples from real images that ship in packages, one per (task, severity), in seconds.

For the MedQ-Bench item generator (`medq-bench --config=configs/bench.py:mode=generate`) and tests. Images:
pydicom's `CT_small.dcm` (chest CT) and `MR_small.dcm` (head MR), PET simulated from that MR
with `pet_simulation` (marked `simulated`), scikit-image's retina for fundus. Each example is
built exactly as the precompute builds one (`make_example.make_example`): the registry's
degradation, its label rule and the template descriptions, so the fields follow
`example.EXAMPLE_FIELDS`. Every task of `config.tasks` appears, on the first modality its
degradation lists.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipeline import descriptions, make_example, pet_simulation, readers, slices
from data_pipeline import example as example_lib
from data_pipeline.degradations import registry

_ANATOMY = {"CT": "chest", "MRI": "head", "PET": "head", "fundus": "retina"}


def _pydicom_slice(name, modality, config):
  """The first frame of a pydicom test file as a RawSlice (normalised, resized)."""
  from pydicom.data import get_testdata_file  # pylint: disable=g-import-not-at-top

  pixels, dataset = readers.read_dicom(get_testdata_file(name))
  volume = np.transpose(pixels, (1, 2, 0))
  return slices.volume_to_slices(
    volume,
    key=f"demo:pydicom:{name}",
    modality=modality,
    anatomy=_ANATOMY[modality],
    patient_id=f"pydicom/{getattr(dataset, 'PatientID', '') or name}",
    config=config,
    orientation="dicom",
    provenance={"package": "pydicom", "file": name},
  )[0]


def _scan(modality, config):
  """A RawSlice of `modality` at config.image_size (PET simulated from pydicom's MR_small)."""
  if modality == "CT":
    return _pydicom_slice("CT_small.dcm", "CT", config)
  if modality == "MRI":
    return _pydicom_slice("MR_small.dcm", "MRI", config)
  if modality == "PET":
    from pydicom.data import get_testdata_file  # pylint: disable=g-import-not-at-top

    pixels, dataset = readers.read_dicom(get_testdata_file("MR_small.dcm"))
    mri = slices.normalise_volume(np.transpose(pixels, (1, 2, 0)), "MRI", config, "MR_small.dcm")
    spacing = [float(v) for v in getattr(dataset, "PixelSpacing", (1.0, 1.0))]
    activity, info = pet_simulation.simulate_pet_volume(mri, (*spacing, 1.0))
    return slices.volume_to_slices(
      activity,
      key="demo:pydicom:MR_small.dcm:pet",
      modality="PET",
      anatomy=_ANATOMY["PET"],
      patient_id="pydicom/MR_small.dcm",
      config=config,
      orientation="dicom",
      simulated=True,
      provenance={"package": "pydicom", "file": "MR_small.dcm", "pet_simulation": info},
    )[0]
  if modality == "fundus":
    from skimage import data as skdata  # pylint: disable=g-import-not-at-top

    image = readers.to_grey(skdata.retina(), "skimage:retina")
    return slices.volume_to_slices(
      image[:, :, None],
      key="demo:skimage:retina",
      modality="fundus",
      anatomy=_ANATOMY["fundus"],
      patient_id="skimage/retina",
      config=config,
      orientation="dicom",
      provenance={"package": "scikit-image", "file": "retina.jpg"},
    )[0]
  raise ValueError(f"modality: no demo image for {modality!r}; known: {tuple(_ANATOMY)}")


def demo_examples(config, seed: int = 0, severities=("mild", "moderate", "severe")) -> list[dict]:
  """One example per (task, severity): dicts with `example.EXAMPLE_FIELDS`.

  config: the data config (the entry point passes configs/data/medq_sample.py at 64 px,
  runlocal sizes); seed: the global seed (degradations and wording). Images are float32
  [S, S] in [0, 1], S = config.image_size.
  """
  config = config.copy_and_resolve_references()
  config.seed = int(seed)
  for severity in severities:
    if severity not in example_lib.SEVERITIES:
      raise ValueError(f"severities: {severity!r} not in {example_lib.SEVERITIES}")
  labeller = descriptions.TemplateLabeller()
  scans = {}
  examples = []
  for task in config.tasks:
    modality = registry.get(task).modalities[0]
    if modality not in scans:
      scans[modality] = dataclasses.asdict(_scan(modality, config))
    raw = scans[modality]
    for severity in severities:
      item = {
        "id": f"{raw['key']}:{task}:{severity}",
        "task": task,
        "severity": severity,
        "split": "bench",
      }
      examples.append(make_example.make_example(raw, item, config, labeller))
  return examples
