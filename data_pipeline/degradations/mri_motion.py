"""MRI motion: TorchIO RandomMotion (k-space composed from rigidly moved copies)."""

import numpy as np
import torch
import torchio as tio


def simulate_motion(image, degrees, translation_mm, num_transforms, seed,
                    field_of_view_mm=220.0):
  """image: float32 [S, S] in [0, 1] -> (motion-corrupted float32 [S, S], params).

  The slice is given a pixel spacing of field_of_view_mm / S, so `translation_mm` means the
  same physical motion at every image size.

  TorchIO draws the motion from the torch RNG, seeded here with `seed` (a torch.Generator is
  not accepted by TorchIO), so the result is a function of (image, parameters, seed). The
  sampled rotations, translations and times are recorded.
  """
  torch.manual_seed(seed % (2 ** 63))
  spacing = float(field_of_view_mm) / image.shape[0]
  affine = np.diag([spacing, spacing, 1.0, 1.0])
  subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(
      np.ascontiguousarray(image, np.float32))[None, :, :, None], affine=affine))
  transform = tio.RandomMotion(degrees=float(degrees), translation=float(translation_mm),
                               num_transforms=int(num_transforms))
  moved = transform(subject)
  applied = moved.history[-1]
  params = {"library": "torchio.RandomMotion", "degrees": float(degrees),
            "translation_mm": float(translation_mm), "num_transforms": int(num_transforms),
            "pixel_spacing_mm": spacing,
            "sampled_degrees": np.asarray(applied.degrees["image"]).round(4).tolist(),
            "sampled_translation_mm": np.asarray(applied.translation["image"]).round(4).tolist(),
            "sampled_times": np.asarray(applied.times["image"]).round(4).tolist()}
  low = moved.image.data.numpy()[0, :, :, 0]
  return np.clip(low, 0.0, 1.0).astype(np.float32), params
