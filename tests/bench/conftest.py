"""Shared fixtures: data-pipeline-shaped examples from real images, small item files."""

import json

import numpy as np
import pytest
from skimage import data as skdata
from skimage.transform import resize

from data_pipeline.readers import encode_png_base64
from medq_jax.bench.io_files import write_rows


def _small(image, size=64):
  image = image.astype(np.float64)
  image = (image - image.min()) / max(image.max() - image.min(), 1e-9)
  return resize(image, (size, size), anti_aliasing=True).astype(np.float32)


def make_example(
  example_id, high, modality, task, severity, quality, anatomy="head", noise=0.1, seed=0
):
  rng = np.random.default_rng(seed)
  low = np.clip(high + rng.normal(0, noise, high.shape), 0, 1).astype(np.float32)
  return {
    "id": example_id,
    "split": "test",
    "patient_id": f"p-{example_id}",
    "low": low,
    "high": high,
    "modality": modality,
    "anatomy": anatomy,
    "task": task,
    "severity": severity,
    "quality_label": quality,
    "degradation_params": json.dumps({"sigma": noise}),
    "provenance": json.dumps({"source": "skimage.data"}),
    "simulated": True,
    "instruction": "",
    "description": (
      f"This is a {modality} image of the {anatomy}. The image shows {severity} noise that "
      f"reduces clarity. Overall, the quality of this image is {quality}."
    ),
  }


@pytest.fixture(scope="session")
def phantom():
  return _small(skdata.shepp_logan_phantom())


@pytest.fixture(scope="session")
def camera():
  return _small(skdata.camera())


@pytest.fixture(scope="session")
def examples(phantom, camera):
  return [
    make_example("ct-1", phantom, "CT", "ldct", "mild", "usable", "abdomen", noise=0.05, seed=1),
    make_example("ct-2", phantom, "CT", "ldct", "severe", "reject", "abdomen", noise=0.25, seed=2),
    make_example(
      "mr-1", camera, "MRI", "mri_noise", "moderate", "usable", "brain", noise=0.1, seed=3
    ),
    make_example(
      "mr-2", camera, "MRI", "mri_motion", "severe", "reject", "brain", noise=0.2, seed=4
    ),
  ]


@pytest.fixture
def write_qa(tmp_path, phantom):
  """Writes a small perception TSV from row dicts (image filled in unless given)."""
  image = encode_png_base64(phantom)

  def _write(rows, name="qa.tsv", columns=None):
    full = []
    for row in rows:
      row = dict(row)
      row.setdefault("image", image)
      full.append(row)
    path = tmp_path / name
    write_rows(str(path), full, columns)
    return str(path)

  return _write
