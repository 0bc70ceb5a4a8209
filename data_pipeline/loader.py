"""Grain loader over the precomputed ArrayRecord shards (read through TFDS's data source).

Pipeline: MapDataset(source) -> per-host shard (JAX process) -> seeded shuffle -> repeat ->
decode and normalise (uint16 -> float32 [0, 1], bytes -> str) -> batch -> to_iter_dataset ->
optional multiprocess prefetch. Batches are dicts: images float32 [B, H, W], strings [B].
The iterator's `get_state()` / `set_state()` resume exactly where it stopped.
"""

import grain
import tensorflow_datasets as tfds

from data_pipeline import tfds_format


def data_source(data_dir, split, name="medq_sample", version="1.1.0"):
  """The TFDS ArrayRecord random-access source of one split (decodes TFDS features)."""
  builder = tfds.builder_from_directory(tfds_format.dataset_dir(data_dir, name, version))
  if split not in builder.info.splits:
    raise ValueError(f"split: {split!r} not in {sorted(builder.info.splits)} of {data_dir}")
  return builder.as_data_source(split=split)


class DecodeExample(grain.transforms.Map):
  """Stored record -> contract example (see data_pipeline/example.py)."""

  def map(self, element):
    return tfds_format.from_stored(element)


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
  source = data_source(data_dir or config.data_dir, split, config.name, config.version)
  dataset = grain.MapDataset.source(source)[shard_index::shard_count]
  if shuffle:
    dataset = dataset.shuffle(seed=int(config.shuffle_seed))
  dataset = dataset.repeat(num_epochs)
  dataset = dataset.map(DecodeExample())
  return dataset.batch(int(batch_size or config.batch_size), drop_remainder=drop_remainder)


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
