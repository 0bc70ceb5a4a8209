"""Restoration tables against direct scikit-image computation."""

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from medq_jax.bench.restoration import image_metrics, restoration_table


def test_restoration_table_matches_direct_computation(phantom, camera):
  rng = np.random.default_rng(0)
  samples = []
  for task, reference, sigma in (
    ("ldct", phantom, 0.02),
    ("ldct", phantom, 0.08),
    ("mri_noise", camera, 0.05),
    ("mri_noise", camera, 0.01),
    ("mri_noise", camera, 0.1),
  ):
    restored = np.clip(reference + rng.normal(0, sigma, reference.shape), 0, 1).astype(np.float32)
    samples.append((task, restored, reference))
  rows = {row.task: row for row in restoration_table(samples)}
  for task in ("ldct", "mri_noise"):
    psnr = [
      peak_signal_noise_ratio(ref.astype(np.float64), res.astype(np.float64), data_range=1)
      for t, res, ref in samples
      if t == task
    ]
    ssim = [
      structural_similarity(ref.astype(np.float64), res.astype(np.float64), data_range=1)
      for t, res, ref in samples
      if t == task
    ]
    assert rows[task].count == len(psnr)
    assert rows[task].psnr_mean == pytest.approx(np.mean(psnr))
    assert rows[task].psnr_std == pytest.approx(np.std(psnr))
    assert rows[task].ssim_mean == pytest.approx(np.mean(ssim))
    assert rows[task].ssim_std == pytest.approx(np.std(ssim))
  assert rows["ldct"].psnr_mean > 20 and 0 < rows["mri_noise"].ssim_mean < 1


def test_identical_images_and_shape_errors(phantom):
  rows = restoration_table([("t", phantom, phantom), ("t", np.clip(phantom + 0.01, 0, 1), phantom)])
  assert (
    rows[0].n_infinite_psnr == 1 and np.isfinite(rows[0].psnr_mean) and rows[0].ssim_mean <= 1.0
  )
  with pytest.raises(ValueError, match="equal shape"):
    image_metrics(phantom, phantom[:10])
