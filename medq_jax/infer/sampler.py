"""The rectified-flow restoration sampler: BAGEL's Euler schedule and classifier-free guidance.

Schedule (BAGEL `generate_image`): t = linspace(1, 0, n), shifted s*t / (1 + (s-1) t); n
timesteps give n - 1 Euler updates x <- x - v (t_i - t_{i+1}) from Gaussian noise at t=1 to the
clean latent at t=0 (t=0 clean, v = eps - x0).

Guidance (BAGEL `_forward_flow`, reproduced exactly, quirks included): with three velocities
v (full context), v_text (context without the text) and v_img (without the images),
  text_channel: vt = v_text + s_text (v - v_text), renormed per token to at most |v| (factor
                clamped to [renorm_min, 1]); then v = v_img + s_img (vt - v_img) if s_img > 1.
  global / channel: vt = v_text + s_text (v - v_text); v' = v_img + s_img (vt - v_img) if
                s_img > 1; v = v' * clamp(|v| / |v'|, renorm_min, 1) with the norm over all of a
                row's tokens and channels (global) or per token (channel).
  Guidance applies only where cfg_interval[0] < t <= cfg_interval[1], and -- BAGEL's quirk --
  only when s_text > 1: with s_text <= 1 the image scale is ignored too.
BAGEL's `global` norm spans the whole packed batch (it supports batch size 1 only); ours is per
row, which equals it at batch size 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

RENORM_TYPES = ("global", "channel", "text_channel")


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
  """Defaults are MedQ-Uni's restoration inference (cfg_text 4, cfg_img 2, interval [0, 1],
  text_channel renorm with min 0, 50 timesteps, shift 1)."""

  num_timesteps: int = 50
  timestep_shift: float = 1.0
  cfg_text_scale: float = 4.0
  cfg_img_scale: float = 2.0
  cfg_interval: tuple[float, float] = (0.0, 1.0)
  cfg_renorm_type: str = "text_channel"
  cfg_renorm_min: float = 0.0

  def __post_init__(self):
    if self.num_timesteps < 2:
      raise ValueError(f"num_timesteps: expected >= 2, got {self.num_timesteps}")
    if self.timestep_shift <= 0:
      raise ValueError(f"timestep_shift: expected > 0, got {self.timestep_shift}")
    if self.cfg_renorm_type not in RENORM_TYPES:
      raise ValueError(
        f"cfg_renorm_type: expected one of {RENORM_TYPES}, got {self.cfg_renorm_type!r}"
      )
    low, high = self.cfg_interval
    if not 0.0 <= low <= high <= 1.0:
      raise ValueError(f"cfg_interval: expected 0 <= low <= high <= 1, got {self.cfg_interval}")

  @property
  def guided(self) -> bool:
    """Whether any step is guided (BAGEL: only when the text scale exceeds 1)."""
    return self.cfg_text_scale > 1.0

  @property
  def uses_image_context(self) -> bool:
    return self.guided and self.cfg_img_scale > 1.0


def timestep_schedule(num_timesteps: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
  """(t_i for the n-1 model evaluations, dt_i = t_i - t_{i+1}), float32, BAGEL's schedule."""
  t = np.linspace(1.0, 0.0, num_timesteps, dtype=np.float32)
  t = (shift * t / (1.0 + (shift - 1.0) * t)).astype(np.float32)
  return t[:-1], (t[:-1] - t[1:]).astype(np.float32)


def _norm(x, axes):
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=axes, keepdims=True))


def guide(v, v_text, v_img, settings: SamplerSettings, in_interval) -> jax.Array:
  """The guided velocity [B, L, C] from the three contexts' velocities (see module docstring);
  `in_interval` (a traced bool) switches guidance off outside cfg_interval."""
  if not settings.guided:
    return v
  s_text, s_img, floor = settings.cfg_text_scale, settings.cfg_img_scale, settings.cfg_renorm_min
  v_text_guided = v_text + s_text * (v - v_text)
  if settings.cfg_renorm_type == "text_channel":
    scale = _norm(v, -1) / (_norm(v_text_guided, -1) + 1e-8)
    v_text_guided = v_text_guided * jnp.clip(scale, floor, 1.0)
    guided = v_img + s_img * (v_text_guided - v_img) if s_img > 1.0 else v_text_guided
  else:
    guided = v_img + s_img * (v_text_guided - v_img) if s_img > 1.0 else v_text_guided
    axes = (1, 2) if settings.cfg_renorm_type == "global" else -1
    scale = _norm(v, axes) / (_norm(guided, axes) + 1e-8)
    guided = guided * jnp.clip(scale, floor, 1.0)
  return jnp.where(in_interval, guided, v)


def euler_sample(
  velocity_fn: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]],
  noise: jax.Array,
  settings: SamplerSettings,
) -> jax.Array:
  """Integrates from `noise` [B, L, C] (t=1) to a clean latent (t=0).

  velocity_fn(x_t, t) -> (v, v_text, v_img), each [B, L, C] (the guidance ones may be anything
  when unused). Returns x at t=0. Jit the caller (settings static).
  """
  timesteps, dts = timestep_schedule(settings.num_timesteps, settings.timestep_shift)
  low, high = settings.cfg_interval

  def step(x, t_dt):
    t, dt = t_dt
    v, v_text, v_img = velocity_fn(x, t)
    v = guide(v, v_text, v_img, settings, (t > low) & (t <= high))
    return x - v * dt, None

  x, _ = jax.lax.scan(step, noise, (jnp.asarray(timesteps), jnp.asarray(dts)))
  return x
