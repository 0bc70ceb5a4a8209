"""Structured five-aspect quality descriptions and task instructions, with seeded varied wording.

Aspects (paper §2.1): (i) modality and anatomical region; (ii) degradation type and severity;
(iii) technical cause; (iv) diagnostic impact; (v) the final sentence
"Overall, the quality of this image is <label>." Label rule: the task's own rule if its
degradation module sets one, else config.quality_label_by_severity (default: mild -> good,
diagnostic content intact; moderate -> usable, readable with care; severe -> reject,
re-acquisition advised). Each aspect has several phrasings; the example's seeded RNG picks one,
so no single template can be memorised. The per-task wording (degradation names, causes) lives
with each degradation in data_pipeline/degradations/; this module holds the shared wording.
"""

import numpy as np

from data_pipeline.degradations import registry

MODALITY_NAMES = {
  "CT": ("CT", "computed tomography (CT)", "CT scan"),
  "MRI": ("MRI", "magnetic resonance (MR)", "MR image"),
  "PET": ("PET", "positron emission tomography (PET)", "PET scan"),
  "fundus": ("fundus photograph", "colour fundus image", "retinal fundus photograph"),
}
ASPECT_MODALITY = (
  "This is a {modality} slice of the {anatomy}.",
  "The image is a {modality} of the {anatomy}.",
  "Modality and region: {modality}, {anatomy}.",
  "We are looking at a {modality} covering the {anatomy}.",
)
SEVERITY_WORDS = {
  "mild": ("mild", "slight", "minor"),
  "moderate": ("moderate", "noticeable", "medium-level"),
  "severe": ("severe", "heavy", "pronounced"),
}
ASPECT_DEGRADATION = (
  "It shows {severity} {degradation}.",
  "The main degradation is {degradation}, of {severity} degree.",
  "Degradation: {degradation} ({severity}).",
)
TARGETS = {
  "CT": "low-contrast lesions and organ boundaries",
  "MRI": "grey-white matter boundaries and small lesions",
  "PET": "small foci of tracer uptake and quantitative values",
  "fundus": "small vessels, microaneurysms and the optic disc margin",
}
IMPACTS = {
  "mild": (
    "Diagnostic impact is limited: {target} remain clearly assessable.",
    "The degradation barely affects the reading; {target} are still well seen.",
    "Interpretation of {target} is essentially unaffected.",
  ),
  "moderate": (
    "Diagnostic impact is moderate: {target} are harder to judge and subtle "
    "findings may be missed.",
    "Reading {target} needs care; subtle abnormalities may be obscured.",
    "Confidence in assessing {target} is reduced.",
  ),
  "severe": (
    "Diagnostic impact is severe: {target} cannot be reliably assessed.",
    "The degradation obscures {target}, so the image cannot support a diagnosis.",
    "Assessment of {target} is compromised to the point of being unreliable.",
  ),
}
OVERALL = "Overall, the quality of this image is {label}."
INSTRUCTIONS = (
  "Assess the quality of this medical image, then restore it.",
  "Describe the quality problems of this image and produce a restored version.",
  "First evaluate the image quality, then generate a high-quality image.",
  "Identify the degradation in this scan and restore the image.",
  "Please analyse the quality of this image and restore it to diagnostic quality.",
)


def quality_label(severity, config, task=None):
  """The task's label rule (registry); without a task, config.quality_label_by_severity."""
  if task is not None:
    return registry.get(task).quality_label(severity, config)
  return str(config.quality_label_by_severity[severity])


def _pick(rng, options):
  return options[int(rng.integers(len(options)))]


def template_description(meta, seed):
  """meta: modality, anatomy, task, severity, quality_label -> five-aspect text (seeded)."""
  rng = np.random.default_rng(seed)
  modality, severity = meta["modality"], meta["severity"]
  degradation = registry.get(meta["task"])
  sentences = [
    _pick(rng, ASPECT_MODALITY).format(
      modality=_pick(rng, MODALITY_NAMES[modality]), anatomy=meta["anatomy"]
    ),
    _pick(rng, ASPECT_DEGRADATION).format(
      severity=_pick(rng, SEVERITY_WORDS[severity]),
      degradation=_pick(rng, degradation.degradation_names),
    ),
    _pick(rng, degradation.causes_for(modality)),
    _pick(rng, IMPACTS[severity]).format(target=TARGETS[modality]),
    OVERALL.format(label=meta["quality_label"]),
  ]
  return " ".join(sentences)


def instruction(seed):
  """A task instruction text picked by the seeded RNG."""
  return _pick(np.random.default_rng(seed), INSTRUCTIONS)


class TemplateLabeller:
  """Descriptions from the degradation metadata (the default labeller)."""

  def describe(self, meta, low_image, seed):
    del low_image  # The template knows the degradation exactly; it needs no pixels.
    return template_description(meta, seed)
