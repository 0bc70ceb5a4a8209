"""Descriptions: five aspects, label consistent with severity, varied wording.

The chat pseudo-labeller is tested in test_dp_pseudo_labeller.py.
"""

import pytest

from data_pipeline import descriptions
from data_pipeline.degradations import registry
from dp_testlib import load_config

_META = {"modality": "MRI", "anatomy": "brain", "task": "mri_motion"}


def _aspects_found(text, meta):
  """Which of the five aspects an independent reading of the text finds."""
  sentences = text.split(". ")
  degradation = registry.get(meta["task"])
  causes = degradation.causes_for(meta["modality"])
  return {
    "modality_anatomy": any(
      name in sentences[0] for name in descriptions.MODALITY_NAMES[meta["modality"]]
    )
    and meta["anatomy"] in sentences[0],
    "degradation_severity": any(
      word in text for word in descriptions.SEVERITY_WORDS[meta["severity"]]
    )
    and any(name in text for name in degradation.degradation_names),
    "cause": any(cause in text for cause in causes),
    "impact": any(
      impact.split("{target}")[0] in text for impact in descriptions.IMPACTS[meta["severity"]]
    ),
    "overall": text.endswith(f"Overall, the quality of this image is {meta['quality_label']}."),
  }


@pytest.mark.parametrize(
  "severity,label", [("mild", "good"), ("moderate", "usable"), ("severe", "reject")]
)
def test_description_has_five_aspects_and_label_from_severity(severity, label):
  config = load_config()
  assert descriptions.quality_label(severity, config) == label
  meta = dict(_META, severity=severity, quality_label=descriptions.quality_label(severity, config))
  for seed in range(20):
    text = descriptions.template_description(meta, seed)
    found = _aspects_found(text, meta)
    assert all(found.values()), (found, text)
    other_labels = {"good", "usable", "reject"} - {label}
    assert not any(text.endswith(f"is {other}.") for other in other_labels)


def test_wording_varies_with_seed_and_is_reproducible():
  meta = dict(_META, severity="moderate", quality_label="usable")
  texts = {descriptions.template_description(meta, seed) for seed in range(30)}
  assert len(texts) >= 10
  assert descriptions.template_description(meta, 5) == descriptions.template_description(meta, 5)
  assert len({descriptions.instruction(seed) for seed in range(30)}) >= 3


@pytest.mark.parametrize(
  "task,modality,severity,seed,label,expected",
  [
    (
      "ldct",
      "CT",
      "mild",
      0,
      "good",
      "We are looking at a computed tomography (CT) covering the head. The main degradation is "
      "low-dose quantum noise with fine streaks, of mild degree. The tube current was reduced, so "
      "fewer X-ray photons reach the detector and filtered back-projection amplifies the quantum "
      "noise. Diagnostic impact is limited: low-contrast lesions and organ boundaries remain "
      "clearly assessable. Overall, the quality of this image is good.",
    ),
    (
      "mri_noise",
      "fundus",
      "severe",
      3,
      "reject",
      "We are looking at a fundus photograph covering the retina. It shows severe random noise "
      "with a grainy texture. Short exposure or low light raised the sensor noise of the camera. "
      "Assessment of small vessels, microaneurysms and the optic disc margin is compromised to the "
      "point of being unreliable. Overall, the quality of this image is reject.",
    ),
    (
      "pet_lowcount",
      "PET",
      "moderate",
      7,
      "usable",
      "We are looking at a positron emission tomography (PET) covering the brain. Degradation: "
      "speckled count noise (medium-level). With a low tracer dose the Poisson statistics of the "
      "detected counts dominate the image. Confidence in assessing small foci of tracer uptake and "
      "quantitative values is reduced. Overall, the quality of this image is usable.",
    ),
  ],
)
def test_wording_is_unchanged_by_the_registry(task, modality, severity, seed, label, expected):
  """Texts recorded before the per-task wording moved into the degradation modules."""
  anatomy = {"CT": "head", "fundus": "retina", "PET": "brain"}[modality]
  meta = {
    "modality": modality,
    "anatomy": anatomy,
    "task": task,
    "severity": severity,
    "quality_label": label,
  }
  assert descriptions.template_description(meta, seed) == expected
