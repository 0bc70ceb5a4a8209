"""The loader's one-pass record decoder against TFDS's own per-record decoder (the oracle)."""

import dataclasses

import numpy as np
import pytest
from tensorflow_datasets.proto import tf_example_pb2

from configs import medq_uni
from data_pipeline import example as example_lib
from data_pipeline import loader, tfds_format
from medq_jax import layout as layout_lib
from medq_jax import tokenizer as tokenizer_lib


def _records_and_oracle(config, split="train"):
  """All records of a split, and TFDS's decode of each (tfds.data_source + from_stored)."""
  records, image_size = loader.record_source(config.data_dir, split, config.name, config.version)
  tfds_source = loader.data_source(config.data_dir, split, config.name, config.version)
  assert len(records) == len(tfds_source) > 0
  expected = [tfds_format.from_stored(tfds_source[i]) for i in range(len(tfds_source))]
  return [records[i] for i in range(len(records))], expected, image_size


def test_decode_records_equals_tfds_decode(built_sample):
  config, _ = built_sample
  records, expected, image_size = _records_and_oracle(config)
  assert image_size == config.image_size
  batch = tfds_format.decode_records(records, image_size)
  assert set(batch) == set(example_lib.FIELD_NAMES)
  for name in example_lib.FIELD_NAMES:
    oracle = np.stack([example[name] for example in expected])
    assert batch[name].dtype == oracle.dtype, name
    np.testing.assert_array_equal(batch[name], oracle, err_msg=name)
  assert batch["low"].shape == (len(records), image_size, image_size)


def test_decode_record_gives_the_contract_example(built_sample):
  config, _ = built_sample
  records, expected, image_size = _records_and_oracle(config)
  for record, oracle in list(zip(records, expected))[:5]:
    example = example_lib.validate_example(loader.decode_record(record, image_size), image_size)
    for name in example_lib.FIELD_NAMES:
      assert type(example[name]) is type(oracle[name]), name  # pylint: disable=unidiomatic-typecheck
      np.testing.assert_array_equal(example[name], oracle[name], err_msg=name)


def _example_bytes(features):
  example = tf_example_pb2.Example()
  for name, value in features.items():
    example.features.feature[name].bytes_list.value.append(value)
  return example.SerializeToString()


def test_bad_records_fail_naming_the_record_and_field(built_sample):
  config, _ = built_sample
  records, _, size = _records_and_oracle(config)
  with pytest.raises(ValueError, match="record 1 of 2: not a medq_sample record"):
    tfds_format.decode_records([records[0], b"\xff\x00garbage"], size)
  with pytest.raises(ValueError, match="record 0 of 1: record has no feature 'low'"):
    tfds_format.decode_records([_example_bytes({"metadata": b"{}"})], size)
  with pytest.raises(ValueError, match=r"image 'low' has 8 bytes, expected 32x32 uint16"):
    tfds_format.decode_records(
      [_example_bytes({"low": __import__("zlib").compress(b"0" * 8)})], size
    )
  with pytest.raises(ValueError, match="expected 16x16 uint16"):
    tfds_format.decode_records(records[:1], 16)  # The dataset is 32 px.


def test_trainer_transform_skips_and_counts_bad_records_and_examples(
  built_sample, tmp_path, caplog
):
  """The loader's chunk step with the trainer's packer: an undecodable record and an example too
  long for the layout are skipped with a logged reason and a count; every other row equals
  packing TFDS's own decode of the same record."""
  config, _ = built_sample
  records, expected, image_size = _records_and_oracle(config)
  model_config = medq_uni.get_config("size=tiny,stage=2")
  spec = layout_lib.LayoutSpec.from_config(model_config.model, model_config.layout, 2)
  texts = [t for example in expected for t in (example["instruction"], example["description"])]
  tokenizer_lib.train_bpe_tokenizer(texts, 512, str(tmp_path / "tok"))
  pack = layout_lib.PackExamples(str(tmp_path / "tok"), spec)
  chunk = loader.DecodeAndTransform(image_size, pack, (layout_lib.LayoutError,))
  rows = chunk([records[0], b"not a record", records[1]])
  assert len(rows) == 2 and chunk.skipped == 1
  assert "a record that does not decode" in caplog.text
  for row, oracle in zip(rows, expected[:2]):
    reference = pack(oracle)
    assert set(row) == set(reference)
    for key in row:
      np.testing.assert_array_equal(row[key], reference[key], err_msg=key)

  short_spec = dataclasses.replace(spec, max_und_len=spec.num_vit_tokens + 8)
  too_short = loader.DecodeAndTransform(
    image_size,
    layout_lib.PackExamples(str(tmp_path / "tok"), short_spec),
    (layout_lib.LayoutError,),
  )
  assert too_short(records[:3]) == [] and too_short.skipped == 3
  assert "exceed layout.max_und_len" in caplog.text
