"""FLUX `ae.safetensors` names <-> `FluxAutoEncoder` params.

The Flax tree mirrors the FLUX names with list indices folded into module names:

  encoder.down.{i}.block.{j}.conv1.weight   <-> encoder/down_{i}/block_{j}/conv1/kernel
  encoder.down.{i}.downsample.conv.bias     <-> encoder/down_{i}/downsample/conv/bias
  decoder.up.{i}.block.{j}.norm1.weight     <-> decoder/up_{i}/block_{j}/norm1/scale
  {encoder,decoder}.mid.attn_1.q.weight     <-> .../mid/attn_1/q/kernel

Conv weights [out, in, kh, kw] become kernels [kh, kw, in, out]; GroupNorm weight -> scale.
BAGEL's ``ae.safetensors`` is FLUX's file unchanged, so the same rules load it.

Example::

    # config.model.vae of a size with the FLUX layout (configs/model_sizes.py: base)
    shapes = jax.eval_shape(FluxAutoEncoder(config.model.vae).init, key, images)['params']
    params = load_params(nn.unbox(shapes), iter_safetensors("ae.safetensors"), flux_vae_rules())
"""

from __future__ import annotations

from medq_jax.convert.core import KeyRule, conv_from_flax, conv_to_flax

_RESNET_CONVS = ("conv1", "conv2", "nin_shortcut")
_RESNET_NORMS = ("norm1", "norm2")
_ATTN_CONVS = ("q", "k", "v", "proj_out")


def _join(prefix: str) -> str:
  return f"{prefix.rstrip('/')}/" if prefix else ""


def _conv_rules(source: str, target: str) -> list[KeyRule]:
  return [
    KeyRule(f"{source}.weight", f"{target}/kernel", conv_to_flax, conv_from_flax),
    KeyRule(f"{source}.bias", f"{target}/bias"),
  ]


def _norm_rules(source: str, target: str) -> list[KeyRule]:
  return [
    KeyRule(f"{source}.weight", f"{target}/scale"),
    KeyRule(f"{source}.bias", f"{target}/bias"),
  ]


def _resnet_rules(source: str, target: str) -> list[KeyRule]:
  rules = []
  for name in _RESNET_NORMS:
    rules += _norm_rules(f"{source}.{name}", f"{target}/{name}")
  for name in _RESNET_CONVS:
    rules += _conv_rules(f"{source}.{name}", f"{target}/{name}")
  return rules


def _mid_rules(source: str, target: str) -> list[KeyRule]:
  rules = _resnet_rules(f"{source}.block_1", f"{target}/block_1")
  rules += _resnet_rules(f"{source}.block_2", f"{target}/block_2")
  rules += _norm_rules(f"{source}.attn_1.norm", f"{target}/attn_1/norm")
  for name in _ATTN_CONVS:
    rules += _conv_rules(f"{source}.attn_1.{name}", f"{target}/attn_1/{name}")
  return rules


def flux_vae_rules(source_prefix: str = "", target_prefix: str = "") -> list[KeyRule]:
  """Key rules for the FLUX autoencoder.

  Args:
    source_prefix: prefix of the checkpoint keys, '' for FLUX's / BAGEL's ``ae.safetensors``.
    target_prefix: Flax path of the `FluxAutoEncoder` params ('' at root, e.g. 'vae').
  """
  src, dst = source_prefix, _join(target_prefix)
  rules: list[KeyRule] = []
  for side in ("encoder", "decoder"):
    s, t = f"{src}{side}", f"{dst}{side}"
    rules += _conv_rules(f"{s}.conv_in", f"{t}/conv_in")
    rules += _mid_rules(f"{s}.mid", f"{t}/mid")
    rules += _norm_rules(f"{s}.norm_out", f"{t}/norm_out")
    rules += _conv_rules(f"{s}.conv_out", f"{t}/conv_out")
  rules += _resnet_rules(
    f"{src}encoder.down.{{i}}.block.{{j}}", f"{dst}encoder/down_{{i}}/block_{{j}}"
  )
  rules += _conv_rules(
    f"{src}encoder.down.{{i}}.downsample.conv", f"{dst}encoder/down_{{i}}/downsample/conv"
  )
  rules += _resnet_rules(f"{src}decoder.up.{{i}}.block.{{j}}", f"{dst}decoder/up_{{i}}/block_{{j}}")
  rules += _conv_rules(
    f"{src}decoder.up.{{i}}.upsample.conv", f"{dst}decoder/up_{{i}}/upsample/conv"
  )
  return rules
