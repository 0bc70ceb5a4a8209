"""Restoration metrics and classical baselines against direct scikit-image computation."""

import numpy as np
import pytest
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.transform import resize

from data_pipeline.degradations.mri_undersampling import undersample
from medq_jax.bench.classical_baselines import BASELINES
from medq_jax.bench.restoration import check_image, image_metrics, restoration_table


def _sk_ssim(reference, image, data_range=1.0):
  return structural_similarity(
    reference.astype(np.float64),
    image.astype(np.float64),
    data_range=data_range,
    gaussian_weights=True,
    sigma=1.5,
    use_sample_covariance=False,
  )


def _noisy(reference, sigma, seed):
  rng = np.random.default_rng(seed)
  return np.clip(reference + rng.normal(0, sigma, reference.shape), 0, 1).astype(np.float32)


def test_restoration_table_matches_direct_computation(phantom, camera):
  samples = []
  for seed, (task, reference, sigma) in enumerate(
    (
      ("ldct", phantom, 0.02),
      ("ldct", phantom, 0.08),
      ("mri_noise", camera, 0.05),
      ("mri_noise", camera, 0.01),
      ("mri_noise", camera, 0.1),
    )
  ):
    samples.append((task, _noisy(reference, sigma, seed), reference))
  rows = {row.task: row for row in restoration_table(samples)}
  for task in ("ldct", "mri_noise"):
    psnr = [
      peak_signal_noise_ratio(ref.astype(np.float64), res.astype(np.float64), data_range=1)
      for t, res, ref in samples
      if t == task
    ]
    ssim = [_sk_ssim(ref, res) for t, res, ref in samples if t == task]
    assert rows[task].count == len(psnr)
    assert rows[task].psnr_mean == pytest.approx(np.mean(psnr), rel=1e-12)
    assert rows[task].psnr_std == pytest.approx(np.std(psnr), rel=1e-12)
    assert rows[task].ssim_mean == pytest.approx(np.mean(ssim), rel=1e-12)
    assert rows[task].ssim_std == pytest.approx(np.std(ssim), rel=1e-12)
  assert rows["ldct"].psnr_mean > 20 and 0 < rows["mri_noise"].ssim_mean < 1


def test_gaussian_ssim_differs_from_the_7x7_default(camera):
  noisy = _noisy(camera, 0.05, 0)
  _, value = image_metrics(noisy, camera)
  assert value == pytest.approx(_sk_ssim(camera, noisy), abs=1e-12)
  default = structural_similarity(camera.astype(np.float64), noisy.astype(np.float64), data_range=1)
  assert abs(value - default) > 1e-3  # the old uniform 7x7 window is not what we compute


def test_jax_ssim_equals_evaluation_ssim(phantom, camera):
  from medq_jax.metrics import ssim as jax_ssim

  for seed, (reference, sigma) in enumerate(((phantom, 0.03), (camera, 0.1), (camera, 0.01))):
    noisy = _noisy(reference, sigma, seed)
    _, value = image_metrics(noisy, reference)
    assert abs(float(jax_ssim(noisy[None], reference[None])) - value) < 1e-5


def test_data_range_is_explicit(camera):
  scaled, noisy = camera * 255.0, _noisy(camera, 0.05, 1) * 255.0
  value_psnr, value_ssim = image_metrics(noisy, scaled, data_range=255.0)
  assert value_psnr == pytest.approx(peak_signal_noise_ratio(scaled, noisy, data_range=255.0))
  assert value_ssim == pytest.approx(_sk_ssim(scaled, noisy, 255.0))
  with pytest.raises(
    ValueError, match=r"field .reference.: values in \[3.82, 234\], expected \[0, 1\]"
  ):
    image_metrics(noisy, scaled)  # a [0, 255] image scored with the default range


def test_identical_images_and_input_errors(phantom):
  rows = restoration_table([("t", phantom, phantom), ("t", np.clip(phantom + 0.01, 0, 1), phantom)])
  assert rows[0].n_infinite_psnr == 1 and np.isfinite(rows[0].psnr_mean)
  assert rows[0].ssim_mean <= 1.0
  with pytest.raises(ValueError, match=r"case c1 field 'restored': shape \(10, 64\), expected"):
    image_metrics(phantom[:10], phantom, case_id="c1")
  outside = phantom.copy()
  outside[0, 0], outside[0, 1] = -0.31, 1.2
  with pytest.raises(ValueError, match=r"case c2 field 'x': values in \[-0.31, 1.2\], expected"):
    check_image(outside, case_id="c2", field="x")
  bad = phantom.copy()
  bad[3, 3] = np.nan
  with pytest.raises(ValueError, match="case c3 field 'restored': 1 NaN/Inf"):
    image_metrics(bad, phantom, case_id="c3")
  with pytest.raises(ValueError, match=r"case c4 field 'y': expected a \[H, W\] image"):
    check_image(np.stack([phantom] * 3, -1), case_id="c4", field="y")
  # float round-off just outside [0, 1] is accepted and clipped
  assert check_image(phantom + 1e-7, case_id="c5", field="z").max() <= 1.0


@pytest.fixture(scope="module")
def shepp():
  image = resize(skdata.shepp_logan_phantom(), (96, 96), anti_aliasing=True)
  return np.clip(image, 0, 1)


@pytest.mark.parametrize("task", ["ldct", "mri_noise", "pet_lowcount"])
@pytest.mark.parametrize("sigma", [0.05, 0.1])
def test_noise_baselines_beat_identity(shepp, task, sigma):
  name, restore = BASELINES[task]
  noisy = _noisy(shepp, sigma, 3).astype(np.float64)
  out = restore(noisy, 1.0)
  assert name.startswith("nl_means") and out.min() >= 0 and out.max() <= 1
  before = peak_signal_noise_ratio(shepp, noisy, data_range=1)
  after = peak_signal_noise_ratio(shepp, out, data_range=1)
  assert after > before + 2.0, (before, after)


def test_artifact_baselines_stay_near_identity_and_remove_noise(shepp):
  rng = np.random.default_rng(0)
  config = type("C", (), {"density_std": 0.25})
  zero_filled, _ = undersample(shepp.astype(np.float32), 4.0, 0.08, rng, config)
  zero_filled = zero_filled.astype(np.float64)
  identity = peak_signal_noise_ratio(shepp, zero_filled, data_range=1)
  for task in ("mri_undersampling", "mri_motion"):
    name, restore = BASELINES[task]
    assert name == "tv_chambolle(weight=sigma_est)"
    # without the sampling mask nothing recovers missing k-space: it stays at the identity
    out = restore(zero_filled, 1.0)
    assert out.min() >= 0 and out.max() <= 1
    assert abs(peak_signal_noise_ratio(shepp, out, data_range=1) - identity) < 0.1
    # noise added on top of the artifact image is removed (measured against that image)
    noisy = _noisy(zero_filled, 0.05, 4).astype(np.float64)
    assert peak_signal_noise_ratio(zero_filled, restore(noisy, 1.0), data_range=1) > (
      peak_signal_noise_ratio(zero_filled, noisy, data_range=1) + 3.0
    )
