"""Structured five-aspect quality descriptions and task instructions, with seeded varied wording.

Aspects (paper §2.1): (i) modality and anatomical region; (ii) degradation type and severity;
(iii) technical cause; (iv) diagnostic impact; (v) the final sentence
"Overall, the quality of this image is <label>." Label rule (config.quality_label_by_severity,
default): mild -> good (diagnostic content intact), moderate -> usable (readable with care),
severe -> reject (re-acquisition advised). Each aspect has several phrasings; the example's
seeded RNG picks one, so no single template can be memorised.
"""

import numpy as np

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
DEGRADATION_NAMES = {
    "ldct": ("low-dose quantum noise with fine streaks", "grainy low-dose noise",
             "noise typical of a reduced-dose acquisition"),
    "mri_undersampling": ("aliasing and blurring from k-space undersampling",
                          "undersampling artifacts (ringing, loss of sharp edges)",
                          "coherent aliasing from incomplete k-space"),
    "mri_motion": ("motion artifacts with ghosting along the phase-encode direction",
                   "ghosting and smearing from motion", "motion-induced ghost replicas"),
    "mri_noise": ("random noise with a grainy texture", "background and tissue noise",
                  "a lowered signal-to-noise ratio"),
    "pet_lowcount": ("low-count statistical noise", "speckled count noise",
                     "Poisson noise from few detected counts"),
}
ASPECT_DEGRADATION = (
    "It shows {severity} {degradation}.",
    "The main degradation is {degradation}, of {severity} degree.",
    "Degradation: {degradation} ({severity}).",
)
CAUSES = {
    "ldct": ("The tube current was reduced, so fewer X-ray photons reach the detector and "
             "filtered back-projection amplifies the quantum noise.",
             "Fewer incident photons make the projection data noisy; reconstruction spreads "
             "this noise into the image."),
    "mri_undersampling": ("Phase-encode lines were skipped to shorten the scan and the missing "
                          "k-space was zero-filled.",
                          "An accelerated acquisition sampled only part of k-space, and a direct "
                          "inverse Fourier transform was applied."),
    "mri_motion": ("The patient moved during the acquisition, so different k-space lines were "
                   "recorded at different positions.",
                   "Rigid head motion between phase-encode steps made the k-space data "
                   "inconsistent."),
    "mri_noise": ("Thermal noise from the patient and receiver coils dominates a weak signal "
                  "(small voxels, short scan or high bandwidth).",
                  "The signal-to-noise ratio is limited by the acquisition settings and coil "
                  "noise."),
    "pet_lowcount": ("The injected dose or scan time was reduced, so few coincidence events "
                     "were detected per voxel.",
                     "With a low tracer dose the Poisson statistics of the detected counts "
                     "dominate the image."),
}
FUNDUS_NOISE_CAUSES = ("Camera sensor noise under low illumination dominates the signal.",
                       "Short exposure or low light raised the sensor noise of the camera.")
TARGETS = {"CT": "low-contrast lesions and organ boundaries",
           "MRI": "grey-white matter boundaries and small lesions",
           "PET": "small foci of tracer uptake and quantitative values",
           "fundus": "small vessels, microaneurysms and the optic disc margin"}
IMPACTS = {
    "mild": ("Diagnostic impact is limited: {target} remain clearly assessable.",
             "The degradation barely affects the reading; {target} are still well seen.",
             "Interpretation of {target} is essentially unaffected."),
    "moderate": ("Diagnostic impact is moderate: {target} are harder to judge and subtle "
                 "findings may be missed.",
                 "Reading {target} needs care; subtle abnormalities may be obscured.",
                 "Confidence in assessing {target} is reduced."),
    "severe": ("Diagnostic impact is severe: {target} cannot be reliably assessed.",
               "The degradation obscures {target}, so the image cannot support a diagnosis.",
               "Assessment of {target} is compromised to the point of being unreliable."),
}
OVERALL = "Overall, the quality of this image is {label}."
INSTRUCTIONS = (
    "Assess the quality of this medical image, then restore it.",
    "Describe the quality problems of this image and produce a restored version.",
    "First evaluate the image quality, then generate a high-quality image.",
    "Identify the degradation in this scan and restore the image.",
    "Please analyse the quality of this image and restore it to diagnostic quality.",
)


def quality_label(severity, config):
  """The documented rule: config.quality_label_by_severity[severity]."""
  return str(config.quality_label_by_severity[severity])


def _pick(rng, options):
  return options[int(rng.integers(len(options)))]


def template_description(meta, seed):
  """meta: modality, anatomy, task, severity, quality_label -> five-aspect text (seeded)."""
  rng = np.random.default_rng(seed)
  modality, task, severity = meta["modality"], meta["task"], meta["severity"]
  causes = FUNDUS_NOISE_CAUSES if (modality == "fundus" and task == "mri_noise") else CAUSES[task]
  sentences = [
      _pick(rng, ASPECT_MODALITY).format(modality=_pick(rng, MODALITY_NAMES[modality]),
                                         anatomy=meta["anatomy"]),
      _pick(rng, ASPECT_DEGRADATION).format(severity=_pick(rng, SEVERITY_WORDS[severity]),
                                            degradation=_pick(rng, DEGRADATION_NAMES[task])),
      _pick(rng, causes),
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
