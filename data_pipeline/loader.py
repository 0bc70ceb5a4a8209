"""Grain loader over the precomputed ArrayRecord shards.

Pipeline: MapDataset(ArrayRecord source of the split's TFDS shards) -> per-host shard (JAX
process) -> seeded shuffle -> repeat -> batch, decoding the batch's records in one pass
(zlib uint16 -> float32 [0, 1], JSON -> str/bool; `tfds_format.decode_records`) ->
to_iter_dataset -> optional multiprocess prefetch. Batches are dicts: images float32 [B, H, W],
other fields numpy arrays [B]. The iterator's `get_state()` / `set_state()` resume exactly.
"""

import grain
import tensorflow_datasets as tfds

from data_pipeline import example as example_lib
from data_pipeline import tfds_format


def _builder(data_dir, split, name, version):
  """The TFDS builder of the precomputed dataset; fails naming the split if it is absent."""
  builder = tfds.builder_from_directory(tfds_format.dataset_dir(data_dir, name, version))
  if split not in builder.info.splits:
    raise ValueError(f"split: {split!r} not in {sorted(builder.info.splits)} of {data_dir}")
  return builder


def data_source(data_dir, split, name="medq_sample", version="1.1.0"):
  """TFDS's random-access source of one split: records decoded by TFDS, one at a time (for
  inspection, rendering and as the reference decoder)."""
  return _builder(data_dir, split, name, version).as_data_source(split=split)


def record_source(data_dir, split, name="medq_sample", version="1.1.0"):
  """(Grain ArrayRecord source of the split's serialized records, image size)."""
  builder = _builder(data_dir, split, name, version)
  paths = [str(path) for path in builder.info.splits[split].filepaths]
  image_size = int(builder.info.features[example_lib.IMAGE_FIELDS[0]].shape[0])
  return grain.sources.ArrayRecordDataSource(paths), image_size


class DecodeRecord(grain.transforms.Map):
  """Serialized record -> contract example, without TFDS's per-feature machinery."""

  def __init__(self, image_size):
    self.image_size = image_size

  def map(self, element):
    batch = tfds_format.decode_records([element], self.image_size)
    return {key: value[0].item() if value.ndim == 1 else value[0]
            for key, value in batch.items()}


class DecodeBatch:
  """Grain `batch_fn`: the batch's serialized records -> one decoded batch (picklable)."""

  def __init__(self, image_size):
    self.image_size = image_size

  def __call__(self, records):
    return tfds_format.decode_records(records, self.image_size)


def _process_shard():
  """(index, count) of this JAX process; (0, 1) when JAX is not initialised for multi-host."""
  import jax
  return jax.process_index(), jax.process_count()


def make_dataset(config, split, *, batch_size=None, num_epochs=None, shuffle=True,
                 shard_index=None, shard_count=None, drop_remainder=True, data_dir=None):
  """Returns a grain.MapDataset of batches (random access, before conversion to an iterator).

  config: the data config (data_dir, name, version, shuffle_seed, batch_size).
  num_epochs None repeats forever. Shards by JAX process unless shard_index/count are given.
  """
  if shard_index is None or shard_count is None:
    shard_index, shard_count = _process_shard()
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index: {shard_index} not in [0, {shard_count})")
  source, image_size = record_source(data_dir or config.data_dir, split, config.name,
                                     config.version)
  dataset = grain.MapDataset.source(source)[shard_index::shard_count]
  if shuffle:
    dataset = dataset.shuffle(seed=int(config.shuffle_seed))
  dataset = dataset.repeat(num_epochs)
  return dataset.batch(int(batch_size or config.batch_size), drop_remainder=drop_remainder,
                       batch_fn=DecodeBatch(image_size))


def make_loader(config, split, *, worker_count=None, **kwargs):
  """Returns a grain.IterDataset of batches; iterate with `iter(...)`, save with get_state().

  worker_count > 0 adds multiprocess prefetch (call from under `if __name__ == '__main__'`
  with absl flags parsed; close the iterator when done).
  """
  dataset = make_dataset(config, split, **kwargs).to_iter_dataset(
      grain.ReadOptions(num_threads=1, prefetch_buffer_size=int(config.prefetch_buffer)))
  workers = int(config.loader_workers if worker_count is None else worker_count)
  if workers > 0:
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return dataset
