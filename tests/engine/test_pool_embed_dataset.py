"""Embedding a precomputed split through the one loader: every example once, embeddings equal
the encoder applied to TFDS's own decoding of the records, and the JAX-process shards partition
the split."""

import json

import numpy as np
import pytest

from configs import model_sizes
from medq_jax.engine import pool_embed
from medq_jax.engine.pool_store import PoolStore


@pytest.fixture(scope="module")
def data_config(tiny_data_config_session):
  return tiny_data_config_session


@pytest.fixture(scope="module")
def encoder():
  return pool_embed.VitEncoder.fresh(model_sizes.model_config("tiny").vit, image_size=32, seed=0)


def test_split_embedded_once_and_equal_to_the_encoder_on_tfds_records(
  tmp_path, data_config, encoder
):
  from data_pipeline import loader, tfds_format

  pool = str(tmp_path / "pool")
  report = pool_embed.embed_dataset(data_config, "val", encoder, pool, field="low", batch_size=8)
  reference = loader.data_source(data_config.data_dir, "val")
  decoded = [tfds_format.from_stored(reference[i]) for i in range(len(reference))]
  examples = {example["id"]: example for example in decoded}
  assert report.embedded == len(examples) > 0 and not report.skipped
  store = PoolStore(pool)
  assert sorted(store.ids) == sorted(f"{item_id}:low" for item_id in examples)
  ids = [item_id[: -len(":low")] for item_id in store.ids]
  images = np.stack([examples[i]["low"] for i in ids])
  np.testing.assert_allclose(store.read_rows(0, len(ids)), encoder(images), atol=1e-4)
  provenance = store.row_info(0)[1]
  assert provenance["split"] == "val" and provenance["field"] == "low"
  assert provenance["modality"] == examples[ids[0]]["modality"]
  assert provenance["provenance"] == json.loads(examples[ids[0]]["provenance"])
  again = pool_embed.embed_dataset(data_config, "val", encoder, pool, field="low", batch_size=8)
  assert again.embedded == 0 and again.already_done == len(examples)


def test_process_shards_partition_the_split(tmp_path, data_config, encoder):
  pool = str(tmp_path / "pool")
  counts = []
  for index in range(2):
    items = pool_embed.dataset_source(data_config, "val", "high", 4, index, 2)
    counts.append(pool_embed.embed(items, encoder, pool, process_index=index).embedded)
  store = PoolStore(pool)
  assert len(store) == sum(counts) and min(counts) > 0
  assert len(set(store.ids)) == len(store)
