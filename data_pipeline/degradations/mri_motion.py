"""MRI motion: TorchIO RandomMotion (k-space composed from rigidly moved copies)."""

import numpy as np

from data_pipeline.degradations import registry


def simulate_motion(image, degrees, translation_mm, num_transforms, seed, field_of_view_mm=220.0):
  """image: float32 [S, S] in [0, 1] -> (motion-corrupted float32 [S, S], params).

  The slice is given a pixel spacing of field_of_view_mm / S, so `translation_mm` means the
  same physical motion at every image size.

  TorchIO draws the motion from the torch RNG, seeded here with `seed` (a torch.Generator is
  not accepted by TorchIO), so the result is a function of (image, parameters, seed). The
  sampled rotations, translations and times are recorded.
  """
  import torch  # pylint: disable=g-import-not-at-top  # Heavy: only when a motion runs.
  import torchio as tio  # pylint: disable=g-import-not-at-top

  torch.manual_seed(seed % (2**63))
  spacing = float(field_of_view_mm) / image.shape[0]
  affine = np.diag([spacing, spacing, 1.0, 1.0])
  subject = tio.Subject(
    image=tio.ScalarImage(
      tensor=torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, :, :, None],
      affine=affine,
    )
  )
  transform = tio.RandomMotion(
    degrees=float(degrees), translation=float(translation_mm), num_transforms=int(num_transforms)
  )
  moved = transform(subject)
  applied = moved.history[-1]
  params = {
    "library": "torchio.RandomMotion",
    "degrees": float(degrees),
    "translation_mm": float(translation_mm),
    "num_transforms": int(num_transforms),
    "pixel_spacing_mm": spacing,
    "sampled_degrees": np.asarray(applied.degrees["image"]).round(4).tolist(),
    "sampled_translation_mm": np.asarray(applied.translation["image"]).round(4).tolist(),
    "sampled_times": np.asarray(applied.times["image"]).round(4).tolist(),
  }
  low = moved.image.data.numpy()[0, :, :, 0]
  return np.clip(low, 0.0, 1.0).astype(np.float32), params


def _simulate(image, params, rng, seed):
  """The registry's entry point: `params` is config.mri_motion at the example's severity."""
  del rng  # TorchIO draws from the torch RNG, seeded with `seed`.
  return simulate_motion(
    image,
    params.degrees,
    params.translation_mm,
    params.num_transforms,
    seed,
    params.field_of_view_mm,
  )


DEGRADATION = registry.register(
  registry.Degradation(
    name="mri_motion",
    modalities=("MRI",),
    simulate=_simulate,
    defaults={
      "degrees": (1.0, 3.0, 6.0),
      "translation_mm": (1.0, 3.0, 6.0),
      "num_transforms": (2, 3, 4),
      "field_of_view_mm": 220.0,  # Pixel spacing = this / image_size.
    },
    per_severity=("degrees", "translation_mm", "num_transforms"),
    degradation_names=(
      "motion artifacts with ghosting along the phase-encode direction",
      "ghosting and smearing from motion",
      "motion-induced ghost replicas",
    ),
    causes=(
      "The patient moved during the acquisition, so different k-space lines were "
      "recorded at different positions.",
      "Rigid head motion between phase-encode steps made the k-space data inconsistent.",
    ),
    bench_term="motion artifacts",
    order=30,
  )
)
