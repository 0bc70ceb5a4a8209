"""The trainer's loader with packing on (`layout.pack_examples_per_row`, medq_jax.train.data):
batches have the packed static shapes, rows respect the budgets and hold several examples with
sample ids 0..n-1, and a restored iterator yields bit-identical packed batches."""

import json
import os

import numpy as np

from configs import medq_uni
from medq_jax import layout as layout_lib
from medq_jax.types import KIND_PAD, PAD_SAMPLE


def test_trainer_loader_packs_rows_and_resumes(tmp_path):
  from launch import prepare
  from medq_jax.train import data as data_lib

  config = medq_uni.get_config("size=tiny,stage=2")
  with config.unlocked():
    config.data.data_dir = str(tmp_path / "data")
    config.data.max_slices_per_volume = 2
    config.data.ldct.num_angles = 30
    config.data.num_workers = 0
    config.train.batch_size = 4
    config.layout.pack_examples_per_row = 3
    config.layout.pack_max_und_len = 400
  prepare.ensure_dataset(config.data)
  tokenizer_dir = prepare.ensure_tokenizer(config, str(tmp_path / "run"))
  with open(os.path.join(tokenizer_dir, prepare.TOKENIZER_SOURCE_FILE)) as handle:
    assert json.load(handle) == prepare.tokenizer_source(config)  # what it was trained for
  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, 2)
  assert spec.packed and spec.row_und_len == 400 and spec.row_gen_len == 3 * spec.gen_len
  iterator = data_lib.make_train_iterator(config, tokenizer_dir, spec)
  first = data_lib.as_numpy_batch(next(iterator))
  zeros = layout_lib.zeros_batch(spec, 4, 1)
  for key, value in first.items():
    assert value.shape == zeros[key].shape, key
  state = iterator.get_state()
  expected = [data_lib.as_numpy_batch(next(iterator)) for _ in range(2)]
  resumed = data_lib.make_train_iterator(config, tokenizer_dir, spec)
  resumed.set_state(state)
  for batch in expected:
    again = data_lib.as_numpy_batch(next(resumed))
    for key in batch:
      np.testing.assert_array_equal(again[key], batch[key], err_msg=key)
  examples = 0
  for batch in [first, *expected]:
    real_und = (batch["und_kind"] != KIND_PAD).sum(axis=1)
    assert (real_und <= 400).all()
    for row in range(4):
      ids = set(batch["gen_sample_ids"][row].tolist()) - {PAD_SAMPLE}
      assert ids == set(range(len(ids))) and len(ids) >= 1
      examples += len(ids)
  assert examples > 12  # more than one example per row on average
