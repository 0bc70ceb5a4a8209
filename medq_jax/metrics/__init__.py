"""Image-quality metrics in JAX (PSNR, SSIM), matching scikit-image's definitions."""

from medq_jax.metrics.image_quality import psnr, ssim

__all__ = ["psnr", "ssim"]
