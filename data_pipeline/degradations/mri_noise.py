"""MRI noise: Rician (magnitude of complex Gaussian) or TorchIO RandomNoise at a per-severity sigma."""

import numpy as np
import torch
import torchio as tio


def add_noise(image, sigma, rng, model, seed):
  """image: float32 [S, S] in [0, 1] -> (noisy float32 [S, S] in [0, 1], params).

  rician: |image + n_r + i n_i|, n ~ N(0, sigma^2) (what a magnitude MR image carries).
  torchio_gaussian: TorchIO RandomNoise(std=(sigma, sigma)), seeded through torch.
  """
  if model == "rician":
    real = image.astype(np.float64) + rng.normal(0.0, sigma, image.shape)
    imaginary = rng.normal(0.0, sigma, image.shape)
    noisy = np.sqrt(real ** 2 + imaginary ** 2)
    params = {"model": "rician", "sigma": float(sigma)}
  else:
    torch.manual_seed(seed % (2 ** 63))
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(
        np.ascontiguousarray(image, np.float32))[None, :, :, None]))
    noisy = tio.RandomNoise(mean=0.0, std=(float(sigma), float(sigma)))(subject)
    noisy = noisy.image.data.numpy()[0, :, :, 0]
    params = {"model": "torchio.RandomNoise", "sigma": float(sigma)}
  return np.clip(noisy, 0.0, 1.0).astype(np.float32), params
