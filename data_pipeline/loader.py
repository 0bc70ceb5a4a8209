"""The one Grain loader over the precomputed ArrayRecord shards: training, benchmarks, tokenizer
training and the multi-host checks all read through `make_loader`.

  ArrayRecord source of the split's TFDS shards
    -> per-host shard (JAX process) -> seeded shuffle -> repeat
    -> chunks of records decoded in one pass (zlib uint16 -> float32 [0, 1], JSON -> str/bool;
       `tfds_format.decode_records`), then the caller's example transform on each example
       (training: the layout packer); a record that does not decode, or an example the transform
       rejects, is skipped with a logged reason and a running count
    -> flattened back to examples -> batches of `batch_size` (static shape: skips never shorten
       a batch) -> optional multiprocess prefetch.

Without a transform a batch is a dict of the example fields: images float32 [B, H, W], other
fields numpy arrays [B]. The iterator's `get_state()` / `set_state()` resume exactly.
The data pipeline knows nothing of the model: the transform is any picklable callable.

With `stream_index=True` each example also carries `STREAM_INDEX`, its record's position in the
loader's stream (unique across processes and epochs, the same after a resume): the seed of
per-example randomness that must replay exactly (the trainer's condition dropout).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import grain
import grain.experimental
import tensorflow_datasets as tfds

from data_pipeline import example as example_lib
from data_pipeline import tfds_format

# The example field that `make_loader(..., stream_index=True)` adds: the record's global position.
STREAM_INDEX = "stream_index"


def _builder(data_dir, split, name, version):
  """The TFDS builder of the precomputed dataset; fails naming the split if it is absent."""
  builder = tfds.builder_from_directory(tfds_format.dataset_dir(data_dir, name, version))
  if split not in builder.info.splits:
    raise ValueError(f"split: {split!r} not in {sorted(builder.info.splits)} of {data_dir}")
  return builder


def data_source(data_dir, split, name="medq_sample", version="1.2.0"):
  """TFDS's random-access source of one split: records decoded by TFDS, one at a time (for
  inspection, rendering and as the reference decoder in tests)."""
  return _builder(data_dir, split, name, version).as_data_source(split=split)


def record_source(data_dir, split, name="medq_sample", version="1.2.0"):
  """(Grain ArrayRecord source of the split's serialized records, image size)."""
  builder = _builder(data_dir, split, name, version)
  paths = [str(path) for path in builder.info.splits[split].filepaths]
  image_size = int(builder.info.features[example_lib.IMAGE_FIELDS[0]].shape[0])
  return grain.sources.ArrayRecordDataSource(paths), image_size


def _unbatch(batch) -> list[dict]:
  """Decoded batch (fields [B, ...]) -> B example dicts (str/bool fields as Python values)."""
  count = len(batch["id"])
  return [
    {key: value[index].item() if value.ndim == 1 else value[index] for key, value in batch.items()}
    for index in range(count)
  ]


def decode_record(record, image_size):
  """One serialized record -> one contract example; ValueError naming the problem."""
  return _unbatch(tfds_format.decode_records([record], image_size))[0]


class _WithStreamIndex(grain.transforms.MapWithIndex):
  """record -> (global stream index, record): index * shard_count + shard_index, so that the
  processes' streams interleave without collisions (picklable for Grain workers)."""

  def __init__(self, shard_index: int, shard_count: int):
    self.shard_index = shard_index
    self.shard_count = shard_count

  def map_with_index(self, index, record):
    return index * self.shard_count + self.shard_index, record


class SkipLimitError(RuntimeError):
  """`max_consecutive_skips` records in a row were skipped: the data cannot feed a batch."""


class DecodeAndTransform:
  """Grain `batch_fn` (picklable): a chunk of serialized records -> the list of examples that
  decode and that the transform accepts (each transformed). The others are skipped with a
  logged reason and counted per process (each Grain worker counts its own).

  With `with_stream_index` the chunk holds (stream index, record) pairs and each decoded example
  gets its index as the `STREAM_INDEX` field before the transform."""

  def __init__(
    self,
    image_size: int,
    transform: Callable | None = None,
    transform_errors: tuple[type[Exception], ...] = (),
    with_stream_index: bool = False,
    max_consecutive_skips: int = 0,
    dataset: str = "",
    group: Callable | None = None,
  ):
    self.image_size = image_size
    self.group = group
    self.transform = transform
    self.transform_errors = tuple(transform_errors)
    self.with_stream_index = with_stream_index
    self.max_consecutive_skips = int(max_consecutive_skips)  # 0: no limit
    self.dataset = dataset
    self.skipped = 0
    self.consecutive = 0
    self.first_reasons: list[str] = []

  def _skip(self, reason: str) -> None:
    self.skipped += 1
    self.consecutive += 1
    if len(self.first_reasons) < 3:
      self.first_reasons.append(reason)
    logging.warning("skipping %s (%d skipped in this process)", reason, self.skipped)
    if self.max_consecutive_skips and self.consecutive >= self.max_consecutive_skips:
      raise SkipLimitError(
        f"{self.dataset}: {self.consecutive} records in a row were skipped (limit "
        f"{self.max_consecutive_skips}); first reasons: " + " | ".join(self.first_reasons)
      )

  def _decode(self, records) -> list[dict]:
    try:  # One pass over the chunk; on a bad record, find it and keep the rest.
      return _unbatch(tfds_format.decode_records(records, self.image_size))
    except ValueError:
      examples = []
      for record in records:
        try:
          examples.append(decode_record(record, self.image_size))
        except ValueError as error:
          self._skip(f"a record that does not decode: {error}")
      return examples

  def _decode_indexed(self, pairs) -> list[dict]:
    indices, records = zip(*pairs) if pairs else ((), ())
    try:
      examples = _unbatch(tfds_format.decode_records(list(records), self.image_size))
      return [dict(example, **{STREAM_INDEX: index}) for index, example in zip(indices, examples)]
    except ValueError:
      examples = []
      for index, record in pairs:
        try:
          examples.append(dict(decode_record(record, self.image_size), **{STREAM_INDEX: index}))
        except ValueError as error:
          self._skip(f"a record that does not decode: {error}")
      return examples

  def __call__(self, records) -> list:
    examples = self._decode_indexed(records) if self.with_stream_index else self._decode(records)
    if self.transform is None:
      self.consecutive = 0 if examples else self.consecutive
      return examples
    out = []
    for example in examples:
      try:
        out.append(self.transform(example))
        self.consecutive = 0
      except self.transform_errors as error:
        self._skip(f"example {example['id']}: {error}")
    return out if self.group is None else self.group(out)


class _Flatten(grain.experimental.FlatMapTransform):
  """A chunk (list) -> its elements."""

  def __init__(self, max_fan_out: int):
    self.max_fan_out = max_fan_out

  def flat_map(self, element):
    return element


def _process_shard():
  """(index, count) of this JAX process; (0, 1) when JAX is not initialised for multi-host."""
  import jax

  return jax.process_index(), jax.process_count()


class _ExitWithParent:
  """Grain worker init (picklable): the worker exits when the process that built the loader
  dies (a SIGKILLed trainer would otherwise leave its workers running forever). The parent's pid
  is taken when the loader is built, so a worker that starts after its parent died exits too."""

  def __init__(self, parent_pid: int):
    self.parent_pid = parent_pid

  def __call__(self, worker_index: int, worker_count: int) -> None:
    del worker_index, worker_count
    parent = self.parent_pid

    def watch():
      while os.getppid() == parent:
        time.sleep(0.5)
      os._exit(1)

    threading.Thread(target=watch, name="exit_with_parent", daemon=True).start()


def make_loader(
  config,
  split,
  *,
  worker_count=None,
  batch_size=None,
  num_epochs=None,
  shuffle=True,
  shard_index=None,
  shard_count=None,
  drop_remainder=True,
  data_dir=None,
  transform: Callable | None = None,
  transform_errors: tuple[type[Exception], ...] = (),
  stream_index: bool = False,
  max_consecutive_skips: int = 0,
  group: Callable | None = None,
  chunk_size: int | None = None,
):
  """Returns a grain.IterDataset of batches; iterate with `iter(...)`, save with get_state().

  config: the data config (data_dir, name, version, shuffle_seed, batch_size, prefetch_buffer,
  loader_workers). num_epochs None repeats forever. Shards by JAX process unless
  shard_index/count are given. transform: example -> element (e.g. a packed model row),
  applied before batching; exceptions of `transform_errors` skip the example (counted).
  stream_index: add `STREAM_INDEX` (the record's global position in the stream) to each example
  before the transform. max_consecutive_skips > 0: that many skipped records in a row raise
  `SkipLimitError` naming the dataset and the first reasons (else an all-bad split waits forever).
  group: list of transformed elements of a chunk -> list of elements (e.g. several examples
  packed into one row); chunk_size: records per chunk (default batch_size), so a chunk of
  batch_size * k records grouped k to an element gives about a batch.
  worker_count > 0 adds multiprocess prefetch (call from under `if __name__ == '__main__'`
  with absl flags parsed; close the iterator when done).
  """
  if shard_index is None or shard_count is None:
    shard_index, shard_count = _process_shard()
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index: {shard_index} not in [0, {shard_count})")
  batch_size = int(batch_size or config.batch_size)
  if batch_size < 1:
    raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
  source, image_size = record_source(
    data_dir or config.data_dir, split, config.name, config.version
  )
  records = grain.MapDataset.source(source)[shard_index::shard_count]
  if shuffle:
    records = records.shuffle(seed=int(config.shuffle_seed))
  records = records.repeat(num_epochs)
  if stream_index:
    records = records.map_with_index(_WithStreamIndex(shard_index, shard_count))
  # Decode in chunks of one batch: one vectorised pass per chunk (see tfds_format).
  chunk_size = int(chunk_size or batch_size)
  chunks = records.batch(
    chunk_size,
    drop_remainder=False,
    batch_fn=DecodeAndTransform(
      image_size,
      transform,
      transform_errors,
      stream_index,
      max_consecutive_skips,
      f"{data_dir or config.data_dir} ({config.name} {config.version}, split {split!r})",
      group,
    ),
  )
  dataset = chunks.to_iter_dataset(
    grain.ReadOptions(num_threads=1, prefetch_buffer_size=int(config.prefetch_buffer))
  )
  dataset = grain.experimental.FlatMapIterDataset(dataset, _Flatten(max(chunk_size, batch_size)))
  dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
  workers = int(config.loader_workers if worker_count is None else worker_count)
  if workers > 0:
    dataset = dataset.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=workers), worker_init_fn=_ExitWithParent(os.getpid())
    )
  return dataset


def one_pass(config, split, batch_size, data_dir=None):
  """Every example of `split` once, in stored order, in this process, the last batch short:
  what evaluation, tokenizer training and stage-0 validation read (`make_loader` settings)."""
  return make_loader(
    config,
    split,
    worker_count=0,
    batch_size=batch_size,
    num_epochs=1,
    shuffle=False,
    shard_index=0,
    shard_count=1,
    drop_remainder=False,
    data_dir=data_dir,
  )
