"""The trainer's input: the one data loader (`data_pipeline.loader.make_loader`) with the layout
packer (`medq_jax.layout.PackExamples`) as its example transform.

Records that do not decode, and examples that do not fit the layout (texts longer than
`layout.max_und_len`, wrong image shapes), are skipped by the loader with a logged reason and a
running count; batches keep their static shape. After `train.max_consecutive_skips` skips in a
row the loader raises `data_pipeline.loader.SkipLimitError` naming the dataset and the first
reasons (an all-undecodable split would otherwise never fill a batch).

Condition dropout (`config.train.dropout_*`) is drawn per example from `train.seed` and the
record's position in the loader's stream (the loader adds it), so a resumed run sees exactly the
rows an uninterrupted one would.

Packing (`layout.pack_examples_per_row` = K > 1): the loader reads chunks of batch_size * K
records, packs each into single-example rows and joins those in stream order into rows of up to K
examples and `layout.pack_max_und_len` und tokens (`medq_jax.packing.PackRows`); a row never spans
two chunks, so the grouping is a pure function of the chunk and resumes exactly.
"""

from __future__ import annotations

import numpy as np

from data_pipeline import loader as data_loader
from medq_jax import layout as layout_lib
from medq_jax import packing
from medq_jax.sharding import per_host_batch_size
from medq_jax.tokenizer import load_tokenizer, special_ids


def make_train_loader(
  config,
  tokenizer_dir: str,
  spec: layout_lib.LayoutSpec,
  split: str = "train",
  worker_count: int | None = None,
):
  """The Grain IterDataset of host-local packed batches (dicts of numpy arrays [B, ...])."""
  dropout = layout_lib.ConditionDropout.from_config(config.train)
  batch_size = per_host_batch_size(config.train.batch_size)
  group = chunk_size = None
  if spec.packed:
    pad_id = special_ids(load_tokenizer(tokenizer_dir))["pad"]
    group, chunk_size = packing.PackRows(spec, pad_id), batch_size * spec.examples_per_row
  return data_loader.make_loader(
    config.data,
    split,
    batch_size=batch_size,
    worker_count=worker_count,
    transform=layout_lib.PackExamples(tokenizer_dir, spec, dropout, data_loader.STREAM_INDEX),
    transform_errors=(layout_lib.LayoutError,),
    stream_index=dropout.active,
    max_consecutive_skips=int(config.train.get("max_consecutive_skips", 1000)),
    group=group,
    chunk_size=chunk_size,
  )


def make_train_iterator(
  config, tokenizer_dir: str, spec: layout_lib.LayoutSpec, split: str = "train"
):
  """A checkpointable iterator over `make_train_loader`'s batches (what the loop consumes)."""
  return iter(make_train_loader(config, tokenizer_dir, spec, split))


def as_numpy_batch(batch) -> dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in batch.items()}
