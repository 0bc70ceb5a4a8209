"""Losses and metrics against independent oracles (scikit-image, NumPy)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from medq_jax import objectives
from medq_jax.metrics import psnr, ssim


@pytest.fixture(scope="module")
def image_pair():
  from skimage.data import camera
  from skimage.transform import resize

  clean = resize(camera().astype(np.float32) / 255.0, (48, 48), anti_aliasing=True)
  noisy = np.clip(clean + np.random.default_rng(0).normal(0, 0.08, clean.shape), 0, 1)
  return clean.astype(np.float32), noisy.astype(np.float32)


def test_ssim_matches_scikit_image(image_pair):
  clean, noisy = image_pair
  expected = structural_similarity(
    clean, noisy, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
  )
  assert abs(float(ssim(clean, noisy)) - expected) < 1e-5
  assert abs(float(ssim(clean, clean)) - 1.0) < 1e-6


def test_psnr_matches_scikit_image(image_pair):
  clean, noisy = image_pair
  assert (
    abs(float(psnr(noisy, clean)) - peak_signal_noise_ratio(clean, noisy, data_range=1.0)) < 1e-3
  )


def test_rectified_flow_identities():
  rng = jax.random.PRNGKey(0)
  x0 = jax.random.normal(rng, (2, 5, 8))
  eps = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 8))
  t = jnp.array([[0.3] * 5, [0.9] * 5])
  x_t = objectives.noise_latents(x0, eps, t)
  np.testing.assert_allclose(objectives.noise_latents(x0, eps, jnp.zeros_like(t)), x0)
  np.testing.assert_allclose(objectives.noise_latents(x0, eps, jnp.ones_like(t)), eps)
  np.testing.assert_allclose(objectives.predicted_clean(x_t, t, eps - x0), x0, atol=1e-5)
  mask = jnp.ones((2, 5))
  assert float(objectives.rectified_flow_loss(eps - x0, x0, eps, mask)) < 1e-10
  wrong = jnp.zeros_like(x0)
  expected = np.mean(np.asarray(eps - x0) ** 2)
  assert abs(float(objectives.rectified_flow_loss(wrong, x0, eps, mask)) - expected) < 1e-5


def test_timestep_shift_moves_mass_to_noise():
  t1 = objectives.sample_timesteps(jax.random.PRNGKey(0), (20000,), 1.0)
  t3 = objectives.sample_timesteps(jax.random.PRNGKey(0), (20000,), 3.0)
  assert float(t1.min()) > 0 and float(t1.max()) < 1
  assert abs(float(t1.mean()) - 0.5) < 0.01 and float(t3.mean()) > float(t1.mean()) + 0.1
  np.testing.assert_allclose(t3, 3 * t1 / (1 + 2 * t1), atol=1e-6)


def test_cross_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 4, 7)).astype(np.float32)
  targets = rng.integers(0, 7, (2, 4))
  mask = np.array([[1, 1, 0, 0], [0, 1, 1, 0]], np.float32)
  loss, accuracy = objectives.next_token_cross_entropy(logits, targets, mask)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  picked = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  assert abs(float(loss) - (-(picked * mask).sum() / mask.sum())) < 1e-5
  hits = (logits.argmax(-1) == targets) * mask
  assert abs(float(accuracy) - hits.sum() / mask.sum()) < 1e-6


def test_cross_entropy_gradient_matches_torch():
  """Loss and logit gradient against torch's cross_entropy, with logits large enough that an
  unshifted exp would overflow."""
  import torch

  rng = np.random.default_rng(1)
  logits = (rng.normal(size=(2, 5, 11)) * 40.0).astype(np.float32)
  targets = rng.integers(0, 11, (2, 5))
  targets[0, 4] = -1  # a position with no target: masked out, its target clamped
  mask = (targets >= 0).astype(np.float32)
  loss_fn = lambda x: objectives.next_token_cross_entropy(x, jnp.asarray(targets), mask)[0]
  loss, grad = jax.value_and_grad(loss_fn)(jnp.asarray(logits))
  x = torch.tensor(logits, requires_grad=True)
  expected = torch.nn.functional.cross_entropy(
    x.reshape(-1, 11), torch.tensor(targets.reshape(-1)), ignore_index=-1
  )
  expected.backward()
  assert np.isfinite(float(loss))
  np.testing.assert_allclose(float(loss), expected.item(), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), x.grad.numpy(), atol=1e-6)


def test_ssim_non_square_matches_scikit_image():
  """The banded-matmul filter on an image whose sides differ (each side its own band)."""
  from skimage.data import camera
  from skimage.transform import resize

  clean = resize(camera().astype(np.float32) / 255.0, (37, 90), anti_aliasing=True)
  noisy = np.clip(clean + np.random.default_rng(2).normal(0, 0.1, clean.shape), 0, 1)
  expected = structural_similarity(
    clean, noisy, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
  )
  assert abs(float(ssim(clean.astype(np.float32), noisy.astype(np.float32))) - expected) < 1e-5


def test_paper_loss_weights(image_pair):
  clean, noisy = image_pair
  l1, one_minus_ssim = objectives.pixel_losses(noisy[None], clean[None], jnp.ones(1))
  assert abs(float(l1) - np.abs(noisy - clean).mean()) < 1e-6
  l_ir = objectives.restoration_loss(1.0, l1, one_minus_ssim, 0.2, 0.1)
  assert abs(float(l_ir) - (1.0 + 0.2 * float(l1) + 0.1 * float(one_minus_ssim))) < 1e-6
  assert abs(float(objectives.total_loss(l_ir, 2.0, 0.25)) - (float(l_ir) + 0.5)) < 1e-6


def test_masked_pixel_losses_equal_the_cropped_images(image_pair):
  """An image padded into a larger canvas (top-left, the rest anything) with its pixel mask
  scores what scikit-image gives the image cropped: SSIM and L1; an empty mask counts nothing."""
  clean, noisy = image_pair
  side, canvas = 32, 48
  target = np.full((2, canvas, canvas), 0.5, np.float32)
  restored = np.random.default_rng(1).random((2, canvas, canvas)).astype(np.float32)
  target[0, :side, :side], restored[0, :side, :side] = clean[:side, :side], noisy[:side, :side]
  mask = np.zeros((2, canvas, canvas), bool)
  mask[0, :side, :side] = True  # row 1: an empty packed slot
  expected_ssim = structural_similarity(
    clean[:side, :side],
    noisy[:side, :side],
    data_range=1.0,
    gaussian_weights=True,
    sigma=1.5,
    use_sample_covariance=False,
  )
  values = ssim(restored, target, per_image=True, mask=mask)
  assert abs(float(values[0]) - expected_ssim) < 1e-5 and float(values[1]) == 0.0
  l1, one_minus_ssim = objectives.pixel_losses(restored, target, jnp.array([1.0, 0.0]), mask)
  assert abs(float(l1) - np.abs(noisy[:side, :side] - clean[:side, :side]).mean()) < 1e-6
  assert abs(float(one_minus_ssim) - (1 - expected_ssim)) < 1e-5
  full = np.ones((1, canvas, canvas), bool)  # a full mask is the unmasked loss
  np.testing.assert_allclose(
    objectives.pixel_losses(noisy[None], clean[None], jnp.ones(1), full),
    objectives.pixel_losses(noisy[None], clean[None], jnp.ones(1)),
    rtol=1e-6,
  )
