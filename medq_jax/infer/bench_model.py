"""MedQUni as a MedQ-Bench `BenchModel`: option log-likelihoods from one forward pass, and
greedy text for descriptions and comparisons.

Sequences (und stream only; no VAE tokens are needed for understanding):
  <|im_start|> prompt <|im_end|>  <|vision_start|> ViT(image) <|vision_end|> [...second image]
  <|im_start|> answer <|im_end|>
Greedy decoding recomputes the whole static-shape sequence per token (one jit-compiled forward,
O(L^2) per token): exact, and adequate for tiny/small configs; KV-cached decoding belongs to the
inference engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from medq_jax import checkpoints
from medq_jax import layout as layout_lib
from medq_jax.models.medq_uni import MedQUni
from medq_jax.tokenizer import load_tokenizer, special_ids
from medq_jax.types import KIND_TEXT, SPLIT_CAUSAL, latent_dim


def grey01(image: np.ndarray) -> np.ndarray:
  """uint8/float [H, W] or [H, W, C] -> float32 [H, W] in [0, 1]."""
  image = np.asarray(image)
  if image.ndim == 3:
    image = image[..., :3].mean(axis=-1)
  image = image.astype(np.float32)
  if image.max() > 1.0:
    image = image / 255.0
  return np.clip(image, 0.0, 1.0)


class MedQUniBenchModel:
  """Adapter from (config, params, tokenizer) to the `BenchModel` protocol."""

  def __init__(self, config, params: Any, tokenizer, max_new_tokens: int = 96):
    self.config = config
    self.params = params
    self.tokenizer = tokenizer
    self.special = special_ids(tokenizer)
    self.spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, 2)
    self.max_new_tokens = max_new_tokens
    model = MedQUni(config.model)
    self._logits = jax.jit(lambda p, b: model.apply({"params": p}, b)["logits"])

  # --------------------------------------------------------------------------- sequences
  def _encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False)

  def _prefix(self, images: Sequence[np.ndarray], prompt: str) -> layout_lib.RowBuilder:
    row = layout_lib.RowBuilder()
    row.text([self.special["im_start"], *self._encode(prompt), self.special["im_end"]], loss=False)
    for index in range(len(images)):
      row.vit_image(
        self.spec.num_vit_tokens,
        self.special["vision_start"],
        self.special["vision_end"],
        first_index=index * self.spec.num_vit_tokens,
      )
    return row

  def _batch(self, rows: list[dict], images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    batch = layout_lib.collate(rows)
    size, patch, grid = self.spec.vit_image_size, self.spec.vit_patch_size, self.spec.vit_grid_side
    patches, ids = zip(
      *(
        layout_lib.image_to_vit_patches(
          layout_lib.to_rgb(grey01(image), size, "image", "bench"), patch, grid
        )
        for image in images
      )
    )
    count = len(rows)
    batch["vit_patches"] = np.broadcast_to(
      np.stack(patches), (count,) + np.stack(patches).shape
    ).copy()
    batch["vit_position_ids"] = np.broadcast_to(
      np.stack(ids), (count,) + np.stack(ids).shape
    ).copy()
    batch["vit_valid"] = np.ones(batch["vit_position_ids"].shape, np.bool_)
    batch.update(layout_lib.empty_gen_stream(count, latent_dim(self.config.model)))
    return batch

  # --------------------------------------------------------------------------- protocol
  def option_log_likelihoods(
    self, image: np.ndarray, question: str, options: list[str]
  ) -> np.ndarray:
    """[n_options] sum of log P(option tokens, <|im_end|> | image, question)."""
    rows = []
    for option in options:
      row = self._prefix([image], question)
      row.text([self.special["im_start"], *self._encode(option), self.special["im_end"]], loss=True)
      rows.append(layout_lib.finish_und(row, self.spec.max_und_len, self.special, "bench"))
    batch = self._batch(rows, [image])
    log_probs = jax.nn.log_softmax(self._logits(self.params, batch), axis=-1)
    targets = np.maximum(batch["und_targets"], 0)
    picked = np.take_along_axis(np.asarray(log_probs), targets[..., None], axis=-1)[..., 0]
    return (picked * batch["und_loss_mask"]).sum(axis=-1)

  def generate_ids(self, images: Sequence[np.ndarray], prompt: str) -> list[int]:
    """Greedy answer token ids (without the closing <|im_end|>) for images and a prompt."""
    row = self._prefix(images, prompt)
    row.text([self.special["im_start"]], loss=False)
    split, position = row.split - 1, row.position  # the answer continues that causal split
    und = layout_lib.finish_und(row, self.spec.max_und_len, self.special, "bench")
    batch = self._batch([und], images)
    cursor = len(row.und["token_ids"])
    generated = []
    for _ in range(min(self.max_new_tokens, self.spec.max_und_len - cursor)):
      logits = self._logits(self.params, batch)
      next_id = int(jnp.argmax(logits[0, cursor - 1]))
      if next_id == self.special["im_end"]:
        break
      generated.append(next_id)
      for key, value in (
        ("token_ids", next_id),
        ("kind", KIND_TEXT),
        ("positions", position),
        ("split_ids", split),
        ("split_modes", SPLIT_CAUSAL),
        ("sample_ids", 0),
      ):
        batch[f"und_{key}"][0, cursor] = value
      cursor += 1
      position += 1
    return generated

  def _text(self, ids: list[int]) -> str:
    return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

  def describe(self, image: np.ndarray, prompt: str) -> str:
    return self._text(self.generate_ids([image], prompt))

  def compare(self, image_a: np.ndarray, image_b: np.ndarray, prompt: str) -> str:
    return self._text(self.generate_ids([image_a, image_b], prompt))


def load_from_workdir(workdir: str, config, dtype: str | None = None) -> MedQUniBenchModel:
  """The latest checkpoint of a training run (`workdir/checkpoints`, tokenizer in
  `workdir/tokenizer`) as a BenchModel on the default device: parameters only, no optimizer."""
  params, _ = checkpoints.restore_params(workdir, config.model, dtype=dtype)
  tokenizer_dir = checkpoints.run_tokenizer_dir(workdir, config.layout)
  return MedQUniBenchModel(config, params, load_tokenizer(tokenizer_dir))
