"""The trainer's input pipeline: precomputed examples (data_pipeline) -> layout rows -> batches.

Grain pipeline: ArrayRecord source -> per-host shard -> seeded shuffle -> repeat -> decode and
`PackExamples` (medq_jax.layout) -> batch -> iterator (optionally multiprocess prefetch). Bad
records (undecodable, or texts longer than layout.max_und_len) are skipped with a logged reason.
"""

from __future__ import annotations

import logging
import os

import grain
import jax
import numpy as np

from data_pipeline import loader as data_loader
from medq_jax import layout as layout_lib
from medq_jax import tokenizer as tokenizer_lib


class DecodePackOrSkip(grain.transforms.Map):
  """Serialized record -> layout row; a record that does not decode or does not fit the layout
  becomes None (filtered next) with a logged reason."""

  def __init__(self, tokenizer_dir: str, spec: layout_lib.LayoutSpec, image_size: int):
    self._decode = data_loader.DecodeRecord(image_size)
    self._pack = layout_lib.PackExamples(tokenizer_dir, spec)
    self.skipped = 0  # Per process (each Grain worker counts its own).

  def _skip(self, reason):
    self.skipped += 1
    logging.warning("skipping %s (%d skipped in this process)", reason, self.skipped)

  def map(self, record):
    try:
      example = self._decode.map(record)
    except ValueError as error:
      self._skip(f"a record that does not decode: {error}")
      return None
    try:
      return self._pack.map(example)
    except layout_lib.LayoutError as error:
      self._skip(f"example {example['id']}: {error}")
      return None


def ensure_tokenizer(config, workdir: str) -> str:
  """Returns the tokenizer dir: `config.layout.tokenizer_dir`, or a byte-level BPE trained on
  the train split's instructions and descriptions and saved under workdir (once)."""
  if config.layout.tokenizer_dir:
    tokenizer_lib.load_tokenizer(config.layout.tokenizer_dir)  # fail early, naming the path
    return config.layout.tokenizer_dir
  out_dir = os.path.join(workdir, "tokenizer")
  if os.path.exists(os.path.join(out_dir, "tokenizer.json")):
    return out_dir
  source, image_size = data_loader.record_source(config.data.data_dir, "train",
                                                 config.data.name, config.data.version)
  decode = data_loader.DecodeRecord(image_size)
  texts = []
  for index in range(len(source)):
    example = decode.map(source[index])
    texts += [example["instruction"], example["description"]]
  if jax.process_index() == 0:
    tokenizer_lib.train_bpe_tokenizer(texts, config.layout.tokenizer_vocab_size, out_dir)
  return out_dir


def make_train_iterator(config, tokenizer_dir: str, spec: layout_lib.LayoutSpec,
                        split: str = "train"):
  """A checkpointable Grain iterator over host-local layout batches (dicts of numpy arrays)."""
  data = config.data
  per_host = config.train.batch_size // jax.process_count()
  if per_host * jax.process_count() != config.train.batch_size:
    raise ValueError(f"train.batch_size={config.train.batch_size} is not divisible by "
                     f"{jax.process_count()} processes")
  source, image_size = data_loader.record_source(data.data_dir, split, data.name, data.version)
  dataset = grain.MapDataset.source(source)[jax.process_index()::jax.process_count()]
  dataset = dataset.shuffle(seed=int(data.shuffle_seed)).repeat(None)
  dataset = dataset.map(DecodePackOrSkip(tokenizer_dir, spec, image_size))
  iter_dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4))
  iter_dataset = iter_dataset.filter(lambda row: row is not None).batch(per_host, drop_remainder=True)
  if int(data.loader_workers) > 0:
    iter_dataset = iter_dataset.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=int(data.loader_workers)))
  return iter(iter_dataset)


def as_numpy_batch(batch) -> dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in batch.items()}
