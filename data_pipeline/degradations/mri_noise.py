"""MRI noise: Rician (magnitude of complex Gaussian) or TorchIO RandomNoise at a per-severity sigma."""

import numpy as np

from data_pipeline.degradations import registry

MODELS = ("rician", "torchio_gaussian")


def add_noise(image, sigma, rng, model, seed):
  """image: float32 [S, S] in [0, 1] -> (noisy float32 [S, S] in [0, 1], params).

  rician: |image + n_r + i n_i|, n ~ N(0, sigma^2) (what a magnitude MR image carries).
  torchio_gaussian: TorchIO RandomNoise(std=(sigma, sigma)), seeded through torch.
  """
  if model == "rician":
    real = image.astype(np.float64) + rng.normal(0.0, sigma, image.shape)
    imaginary = rng.normal(0.0, sigma, image.shape)
    noisy = np.sqrt(real**2 + imaginary**2)
    params = {"model": "rician", "sigma": float(sigma)}
  else:
    import torch  # pylint: disable=g-import-not-at-top  # Heavy: only for this model.
    import torchio as tio  # pylint: disable=g-import-not-at-top

    torch.manual_seed(seed % (2**63))
    subject = tio.Subject(
      image=tio.ScalarImage(
        tensor=torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, :, :, None]
      )
    )
    noisy = tio.RandomNoise(mean=0.0, std=(float(sigma), float(sigma)))(subject)
    noisy = noisy.image.data.numpy()[0, :, :, 0]
    params = {"model": "torchio.RandomNoise", "sigma": float(sigma)}
  return np.clip(noisy, 0.0, 1.0).astype(np.float32), params


def _simulate(image, params, rng, seed):
  """The registry's entry point: `params` is config.mri_noise at the example's severity."""
  return add_noise(image, params.sigma, rng, params.model, seed)


def _check(params):
  if params.model not in MODELS:
    raise registry.ParamError("model", f"{params.model!r} not in {MODELS}")


DEGRADATION = registry.register(
  registry.Degradation(
    name="mri_noise",
    # Fundus has no task of its own among the paper's five; it gets this one, described as
    # camera sensor noise (causes_by_modality).
    modalities=("MRI", "fundus"),
    simulate=_simulate,
    defaults={
      "model": "rician",  # rician | torchio_gaussian (TorchIO RandomNoise).
      "sigma": (0.02, 0.05, 0.10),  # Relative to the [0, 1] image range.
    },
    per_severity=("sigma",),
    check=_check,
    degradation_names=(
      "random noise with a grainy texture",
      "background and tissue noise",
      "a lowered signal-to-noise ratio",
    ),
    causes=(
      "Thermal noise from the patient and receiver coils dominates a weak signal (small "
      "voxels, short scan or high bandwidth).",
      "The signal-to-noise ratio is limited by the acquisition settings and coil noise.",
    ),
    causes_by_modality={
      "fundus": (
        "Camera sensor noise under low illumination dominates the signal.",
        "Short exposure or low light raised the sensor noise of the camera.",
      )
    },
    bench_term="noise",
    order=40,
  )
)
