"""The five degradation tasks behind one function, each deterministic given (example id, seed)."""

import hashlib

import numpy as np

from data_pipeline import example as example_lib
from data_pipeline.degradations import ldct
from data_pipeline.degradations import mri_motion
from data_pipeline.degradations import mri_noise
from data_pipeline.degradations import mri_undersampling
from data_pipeline.degradations import pet_lowcount


def example_seed(example_id, seed):
  """A 63-bit seed from (example id, global seed): the same pair always degrades the same way."""
  digest = hashlib.sha256(f"{int(seed)}:{example_id}".encode()).digest()
  return int.from_bytes(digest[:8], "little") >> 1


def degrade(task, image, severity, config, seed):
  """image: float32 [S, S] in [0, 1] -> (low float32 [S, S] in [0, 1], params dict).

  `config` is the data config; the per-task sub-config holds one value per severity.
  """
  level = example_lib.SEVERITIES.index(severity)
  rng = np.random.default_rng(seed)
  if task == "ldct":
    low, params = ldct.simulate_low_dose_ct(image, config.ldct.photons[level], rng, config.ldct)
  elif task == "mri_undersampling":
    sub = config.mri_undersampling
    low, params = mri_undersampling.undersample(
        image, sub.acceleration[level], sub.center_fraction[level], rng, sub)
  elif task == "mri_motion":
    sub = config.mri_motion
    low, params = mri_motion.simulate_motion(
        image, sub.degrees[level], sub.translation_mm[level], sub.num_transforms[level], seed,
        sub.field_of_view_mm)
  elif task == "mri_noise":
    low, params = mri_noise.add_noise(image, config.mri_noise.sigma[level], rng,
                                      config.mri_noise.model, seed)
  elif task == "pet_lowcount":
    low, params = pet_lowcount.simulate_low_count(
        image, config.pet_lowcount.dose_reduction[level], rng, config.pet_lowcount)
  else:
    raise ValueError(f"task: unknown task {task!r}; known: {example_lib.TASKS}")
  params.update(task=task, severity=severity, seed=int(seed))
  return low, params
