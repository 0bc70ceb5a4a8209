"""Each degradation against an independent oracle (NumPy / scikit-image / statistics)."""

import numpy as np
import pytest
from skimage import data as skdata
from skimage import metrics, transform

from data_pipeline import degradations
from data_pipeline.degradations import (
  ldct,
  mri_motion,
  mri_noise,
  mri_undersampling,
  pet_lowcount,
  registry,
)
from dp_testlib import load_config


def _phantom(size=48):
  """Shepp-Logan phantom [size, size] in [0, 1] (scikit-image)."""
  image = transform.resize(skdata.shepp_logan_phantom(), (size, size), anti_aliasing=True)
  return np.clip(image / image.max(), 0, 1).astype(np.float32)


@pytest.mark.parametrize(
  "num_lines,acceleration,center_fraction",
  [(64, 4, 0.08), (48, 4, 0.16), (64, 8, 0.04), (33, 2, 0.2)],
)
def test_line_mask_acceleration_and_centre(num_lines, acceleration, center_fraction):
  mask = mri_undersampling.line_mask(
    num_lines, acceleration, center_fraction, 0.25, np.random.default_rng(3)
  )
  # NumPy reference: the number of lines for the acceleration, the centred block of lines.
  assert mask.sum() == int(np.round(num_lines / acceleration))
  num_center = int(np.round(num_lines * center_fraction))
  centre = np.arange(
    num_lines // 2 - num_center // 2, num_lines // 2 - num_center // 2 + num_center
  )
  assert np.all(mask[centre])
  assert abs(num_lines / mask.sum() - acceleration) <= acceleration * 0.1


def test_line_mask_follows_gaussian_density():
  rng = np.random.default_rng(0)
  hits = sum(mri_undersampling.line_mask(64, 4, 0.04, 0.15, rng).astype(int) for _ in range(400))
  near = hits[32 + 4 : 32 + 10].mean()  # Outside the 3-line centre, close to it.
  far = np.concatenate([hits[:10], hits[-10:]]).mean()
  assert near > 3 * far


def test_zero_filled_matches_numpy_reference():
  image = _phantom()
  config = load_config().mri_undersampling
  low, params = mri_undersampling.undersample(image, 4.0, 0.08, np.random.default_rng(5), config)
  mask = np.zeros(48, bool)
  mask[params["sampled_lines"]] = True
  # Reference without fftshift: move the mask to unshifted frequency order instead.
  reference = np.abs(np.fft.ifft2(np.fft.fft2(image) * np.fft.ifftshift(mask)[None, :]))
  np.testing.assert_allclose(low, np.clip(reference, 0, 1), atol=1e-5)
  assert params["effective_acceleration"] == pytest.approx(4.0)


def test_ldct_psnr_falls_with_dose_and_matches_direct_computation():
  image = _phantom()
  config = load_config().ldct
  config.num_angles = 60
  psnrs = []
  for photons in (1e6, 1e5, 1e4, 1e3):
    low, params = ldct.simulate_low_dose_ct(image, photons, np.random.default_rng(7), config)
    # Direct scikit-image/NumPy computation, written out independently.
    scale = 0.0192 * 250.0 / 48
    theta = np.arange(60) * 3.0
    sinogram = transform.radon(image.astype(np.float64) * scale, theta=theta, circle=False)
    counts = np.random.default_rng(7).poisson(photons * np.exp(-sinogram))
    noisy_sinogram = -np.log(np.maximum(counts, 0.5) / photons)
    noise = (
      transform.iradon(
        noisy_sinogram, theta=theta, circle=False, output_size=48, filter_name="ramp"
      )
      - transform.iradon(sinogram, theta=theta, circle=False, output_size=48, filter_name="ramp")
    ) / scale
    direct = np.clip(image + noise, 0, 1)
    np.testing.assert_allclose(low, direct, atol=1e-5)
    assert params["incident_photons"] == photons
    psnrs.append(metrics.peak_signal_noise_ratio(image, low, data_range=1.0))
  assert all(a > b for a, b in zip(psnrs, psnrs[1:])), psnrs
  assert psnrs[0] - psnrs[-1] > 10.0


def test_pet_counts_follow_poisson_mean_and_variance():
  config = load_config().pet_lowcount
  image = np.full((64, 64), 0.5, np.float32)
  low, params = pet_lowcount.simulate_low_count(image, 20.0, np.random.default_rng(11), config)
  counts = low * config.full_dose_counts / 20.0  # Back to detected counts.
  np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)  # Integer counts.
  mean_expected = 0.5 * config.full_dose_counts / 20.0  # 50.
  # Poisson: mean = variance = lambda; tolerances are ~4.5 standard errors for 4096 pixels.
  assert abs(counts.mean() - mean_expected) < 4.5 * np.sqrt(mean_expected / counts.size)
  assert abs(counts.var() - mean_expected) < 4.5 * mean_expected * np.sqrt(2.0 / counts.size)
  assert params["total_counts"] == int(round(counts.sum()))


def test_pet_lower_dose_is_noisier():
  config = load_config().pet_lowcount
  image = _phantom(64)
  errors = [
    np.mean(
      (pet_lowcount.simulate_low_count(image, drf, np.random.default_rng(1), config)[0] - image)
      ** 2
    )
    for drf in (4.0, 20.0, 100.0)
  ]
  assert errors[0] < errors[1] < errors[2]


def test_motion_changes_image_and_is_reproducible():
  image = _phantom()
  first, params = mri_motion.simulate_motion(image, 5.0, 5.0, 4, seed=123)
  again, _ = mri_motion.simulate_motion(image, 5.0, 5.0, 4, seed=123)
  other, _ = mri_motion.simulate_motion(image, 5.0, 5.0, 4, seed=124)
  assert np.mean(np.abs(first - image)) > 0.01
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  assert len(params["sampled_times"]) == 4 and params["library"] == "torchio.RandomMotion"


def test_rician_noise_background_follows_rayleigh_mean():
  image = np.zeros((128, 128), np.float32)
  sigma = 0.05
  low, _ = mri_noise.add_noise(image, sigma, np.random.default_rng(2), "rician", seed=0)
  # On a zero background the Rician magnitude is Rayleigh: mean sigma * sqrt(pi / 2).
  assert low.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.03)


@pytest.mark.parametrize("model", ["rician", "torchio_gaussian"])
def test_noise_changes_image_and_is_reproducible(model):
  image = _phantom()
  first, params = mri_noise.add_noise(image, 0.05, np.random.default_rng(9), model, seed=9)
  again, _ = mri_noise.add_noise(image, 0.05, np.random.default_rng(9), model, seed=9)
  other, _ = mri_noise.add_noise(image, 0.05, np.random.default_rng(10), model, seed=10)
  assert np.mean(np.abs(first - image)) > 0.01
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  assert params["sigma"] == 0.05


@pytest.mark.parametrize("task", registry.names())
def test_degrade_is_deterministic_given_id_and_seed(task):
  config = load_config()
  config.ldct.num_angles = 30
  image = _phantom(32)
  seed = degradations.example_seed("some:file:3:" + task, config.seed)
  assert seed == degradations.example_seed("some:file:3:" + task, config.seed)
  assert seed != degradations.example_seed("some:file:4:" + task, config.seed)
  first, params = degradations.degrade(task, image, "severe", config, seed)
  second, _ = degradations.degrade(task, image, "severe", config, seed)
  np.testing.assert_array_equal(first, second)
  assert first.dtype == np.float32 and first.shape == image.shape
  assert first.min() >= 0.0 and first.max() <= 1.0
  assert params["task"] == task and params["severity"] == "severe" and params["seed"] == seed


def _direct_call(task, image, level, config, seed):
  """The five tasks called directly with the config's values at severity index `level`."""
  rng = np.random.default_rng(seed)
  if task == "ldct":
    return ldct.simulate_low_dose_ct(image, config.ldct.photons[level], rng, config.ldct)
  if task == "mri_undersampling":
    sub = config.mri_undersampling
    return mri_undersampling.undersample(
      image, sub.acceleration[level], sub.center_fraction[level], rng, sub
    )
  if task == "mri_motion":
    sub = config.mri_motion
    return mri_motion.simulate_motion(
      image,
      sub.degrees[level],
      sub.translation_mm[level],
      sub.num_transforms[level],
      seed,
      sub.field_of_view_mm,
    )
  if task == "mri_noise":
    return mri_noise.add_noise(
      image, config.mri_noise.sigma[level], rng, config.mri_noise.model, seed
    )
  return pet_lowcount.simulate_low_count(
    image, config.pet_lowcount.dose_reduction[level], rng, config.pet_lowcount
  )


@pytest.mark.parametrize(
  "task", ["ldct", "mri_undersampling", "mri_motion", "mri_noise", "pet_lowcount"]
)
@pytest.mark.parametrize("level,severity", list(enumerate(("mild", "moderate", "severe"))))
def test_registry_dispatch_equals_direct_call(task, level, severity):
  """degrade() through the registry gives exactly the module function's output and record."""
  config = load_config()
  config.ldct.num_angles = 30
  image = _phantom(32)
  seed = degradations.example_seed(f"dispatch:{task}:{severity}", 0)
  low, params = degradations.degrade(task, image, severity, config, seed)
  direct, direct_params = _direct_call(task, image, level, config, seed)
  np.testing.assert_array_equal(low, direct)
  assert params == dict(direct_params, task=task, severity=severity, seed=seed)
