"""The training precision policy (`train.precision`): one name for compute and storage dtypes.

  fp32   compute float32, parameters float32
  bf16   compute bfloat16 (matmuls, activations of the decoder, ViT and embedders), parameters,
         gradients, AdamW moments and the EMA float32 (master weights); what stays float32 in
         the model regardless: RMSNorm statistics, RoPE, attention logits and softmax, the
         returned logits and velocities; in the loss: the VAE (frozen, its own float32 module),
         the rectified-flow MSE, log-softmax CE and the pixel losses.
  ""     no policy: `model.dtype` / `model.param_dtype` as set (how configs written before the
         policy, e.g. `--config.model.dtype=bfloat16`, keep working).

A set policy writes `model.dtype` and `model.param_dtype`; a config that sets either to something
else is a config error (`problems`), so the two can never silently disagree.
"""

from __future__ import annotations

POLICIES = {"fp32": "float32", "bf16": "bfloat16"}  # policy -> compute dtype
MASTER_DTYPE = "float32"


def problems(config) -> list[str]:
  """One line per conflict between `train.precision` and `model.dtype` / `model.param_dtype`."""
  policy = config.train.get("precision", "") or ""
  if not policy:
    return []
  if policy not in POLICIES:
    return [f"train.precision={policy!r}: expected one of {sorted(POLICIES)} or '' (no policy)"]
  compute, found = POLICIES[policy], []
  if config.model.dtype not in (MASTER_DTYPE, compute):
    found.append(
      f"model.dtype={config.model.dtype!r} conflicts with train.precision={policy!r} (compute "
      f"{compute}); drop --config.model.dtype, the policy sets it"
    )
  if config.model.param_dtype != MASTER_DTYPE:
    found.append(
      f"model.param_dtype={config.model.param_dtype!r} conflicts with train.precision="
      f"{policy!r}: the policy keeps float32 master weights"
    )
  return found


def model_config(config):
  """`config.model` with the policy applied (a copy; `config.model` itself when no policy).
  Raises ValueError on a conflict (`problems`; the trainer reports it before building)."""
  found = problems(config)
  if found:
    raise ValueError("; ".join(found))
  policy = config.train.get("precision", "") or ""
  if not policy:
    return config.model
  model = config.model.copy_and_resolve_references()
  model.dtype, model.param_dtype = POLICIES[policy], MASTER_DTYPE
  return model
