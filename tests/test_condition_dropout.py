"""Condition dropout for classifier-free guidance (medq_jax.layout): a dropped row equals the
guidance-context row of `sequence_plan(stage, drop=...)` plus BAGEL's RoPE advance; zero
probabilities give today's rows; drop rates match the configured probabilities; the draws come
from (seed, stream index), and the trainer's loader replays them exactly after a resume."""

import itertools

import numpy as np
import pytest

from configs import medq_uni
from medq_jax import layout as layout_lib
from medq_jax.types import KIND_PAD, KIND_VIT, PAD_SAMPLE, SPLIT_CAUSAL

SPECIAL = dict(pad=0, im_start=1, im_end=2, vision_start=3, vision_end=4)
GROUPS = tuple(layout_lib.DROPOUT_GROUPS)


class _CharTokenizer:
  def encode(self, text, add_special_tokens=False):
    return [5 + (ord(c) % 400) for c in text]


def _example(seed=0):
  rng = np.random.default_rng(seed)
  return dict(
    id=f"ex{seed}",
    low=rng.random((40, 40)).astype(np.float32),
    high=rng.random((40, 40)).astype(np.float32),
    instruction="restore this image",
    description="moderate noise, usable",
  )


def _spec(stage):
  config = medq_uni.get_config(f"size=tiny,stage={stage}")
  return layout_lib.LayoutSpec.from_config(config.model, config.layout, stage)


def _reference(example, spec, stage, dropped):
  """NumPy reference of a dropped row: the row of the guidance-context plan without the dropped
  items, each real token's RoPE position advanced by the dropped images before its item."""
  full = layout_lib.sequence_plan(stage)
  reduced = layout_lib.sequence_plan(stage, drop=dropped)
  ref = layout_lib.pack_example(example, _CharTokenizer(), spec, SPECIAL, plan=reduced)
  advance = {}
  for split, item in enumerate(reduced):
    before = full[: [i.name for i in full].index(item.name)]
    advance[split] = sum(
      layout_lib.DROPPED_POSITION_ADVANCE[i.kind] for i in before if i.name in dropped
    )
  shift = np.vectorize(lambda s: advance[s])
  real = ref["und_kind"] != KIND_PAD
  ref["und_positions"] = np.where(
    real, ref["und_positions"] + shift(ref["und_split_ids"]), ref["und_positions"]
  )
  ref["gen_positions"] = ref["gen_positions"] + shift(ref["gen_split_ids"])
  return ref


def _combinations():
  for stage in (1, 2):
    for count in (1, 2, 3):
      for groups in itertools.combinations(GROUPS, count):
        yield stage, groups


@pytest.mark.parametrize("stage,groups", list(_combinations()))
def test_dropped_row_equals_reference(stage, groups):
  spec, example = _spec(stage), _example(stage)
  names = {item.name for item in layout_lib.sequence_plan(stage)}
  dropped = tuple(n for g in groups for n in layout_lib.DROPOUT_GROUPS[g] if n in names)
  row = layout_lib.pack_example(example, _CharTokenizer(), spec, SPECIAL, dropped=dropped)
  ref = _reference(example, spec, stage, dropped)
  for key in [k for k in row if k.startswith("und_")]:
    np.testing.assert_array_equal(row[key], ref[key], err_msg=key)
  # gen: the target's tokens equal the reference's; a dropped condition leaves its slot padding
  real = row["gen_sample_ids"] != PAD_SAMPLE
  for key in ("latent_pos", "positions", "split_ids", "split_modes", "noised", "loss_mask"):
    np.testing.assert_array_equal(row[f"gen_{key}"][real], ref[f"gen_{key}"], err_msg=key)
  tokens = spec.tokens_per_image
  assert row["gen_sample_ids"].shape == (spec.gen_len,)
  if "vae_condition" in dropped:
    assert (~real[:tokens]).all() and real[tokens:].all()
    assert not row["gen_loss_mask"][:tokens].any() and not row["gen_noised"][:tokens].any()
  else:
    assert real.all()
  assert (row["gen_image_index"][tokens:] == 1).all()  # the target keeps the target's slot
  # a dropped description takes its CE loss with it
  assert row["und_loss_mask"].any() == (stage == 2 and "text" not in groups)


def test_dropped_vit_advances_rope_by_one_and_text_by_none():
  """Stage 2, hand-counted: VAE condition at 0; dropped ViT takes position 1; the instruction
  starts at 2. Dropping the texts instead: the target sits right after the ViT image (2)."""
  spec, example = _spec(2), _example()
  row = layout_lib.pack_example(example, _CharTokenizer(), spec, SPECIAL, dropped=("vit",))
  assert list(row["und_positions"][:3]) == [0, 0, 2]
  assert list(row["und_split_ids"][:3]) == [0, 0, 1]
  no_text = layout_lib.pack_example(
    example, _CharTokenizer(), spec, SPECIAL, dropped=("instruction", "description")
  )
  target = no_text["gen_noised"]
  assert set(no_text["gen_positions"][target]) == {2}
  assert set(no_text["gen_split_ids"][target]) == {2}
  assert SPLIT_CAUSAL not in set(no_text["und_split_modes"][no_text["und_kind"] != KIND_PAD])


def test_bad_drops_fail_naming_the_item():
  spec, example = _spec(1), _example()
  with pytest.raises(ValueError, match="'description'.*not items of the plan"):
    layout_lib.pack_example(example, _CharTokenizer(), spec, SPECIAL, dropped=("description",))
  with pytest.raises(ValueError, match="vae_target.*restoration target"):
    layout_lib.pack_example(example, _CharTokenizer(), spec, SPECIAL, dropped=("vae_target",))
  with pytest.raises(ValueError, match="train.dropout_vit: expected a probability"):
    layout_lib.ConditionDropout(vit=1.5)
  pack = _packer(2, layout_lib.ConditionDropout(text=0.5))
  with pytest.raises(ValueError, match="ex0.*stream index in field 'stream_index'"):
    pack.map(_example())


def _packer(stage, dropout):
  pack = layout_lib.PackExamples("unused", _spec(stage), dropout)
  pack._tokenizer, pack._special = _CharTokenizer(), SPECIAL
  return pack


@pytest.mark.parametrize("stage", [1, 2])
def test_zero_probabilities_give_todays_rows(stage):
  spec = _spec(stage)
  for seed in range(3):
    today = layout_lib.pack_example(_example(seed), _CharTokenizer(), spec, SPECIAL)
    for dropout in (None, layout_lib.ConditionDropout(0.0, 0.0, 0.0, seed=7)):
      row = _packer(stage, dropout).map(dict(_example(seed), stream_index=seed))
      assert set(row) == set(today)
      for key in today:
        assert row[key].dtype == today[key].dtype
        np.testing.assert_array_equal(row[key], today[key], err_msg=key)


def test_empirical_rates_match_probabilities_and_draws_replay():
  dropout = layout_lib.ConditionDropout(text=0.1, vit=0.3, vae=0.1, seed=3)
  count = 20000
  draws = [set(dropout.draw(i)) for i in range(count)]
  hits = {
    group: np.array([names[0] in d for d in draws])
    for group, names in layout_lib.DROPOUT_GROUPS.items()
  }
  for group, hit in hits.items():
    p = getattr(dropout, group)
    assert abs(hit.mean() - p) < 4 * np.sqrt(p * (1 - p) / count), (group, hit.mean())
  # independent groups: the joint rate is the product
  joint = (hits["text"] & hits["vit"]).mean()
  assert abs(joint - 0.03) < 4 * np.sqrt(0.03 * 0.97 / count)
  # the texts drop together; the same (seed, index) always draws the same items
  assert all(("instruction" in d) == ("description" in d) for d in draws)
  again = layout_lib.ConditionDropout(text=0.1, vit=0.3, vae=0.1, seed=3)
  assert [set(again.draw(i)) for i in range(500)] == draws[:500]
  other = layout_lib.ConditionDropout(text=0.1, vit=0.3, vae=0.1, seed=4)
  assert [set(other.draw(i)) for i in range(500)] != draws[:500]


def test_packed_rows_drop_at_the_configured_rates():
  """Through the packer: a stage-2 row without text tokens has no CE loss, and the rates of
  rows without ViT tokens / without the condition's gen tokens match the probabilities."""
  pack = _packer(2, layout_lib.ConditionDropout(text=0.2, vit=0.5, vae=0.2, seed=0))
  example, count = _example(), 400
  rows = [pack.map(dict(example, stream_index=i)) for i in range(count)]
  no_text = np.array([not (r["und_token_ids"] == SPECIAL["im_start"]).any() for r in rows])
  no_loss = np.array([not r["und_loss_mask"].any() for r in rows])
  no_vit = np.array([not (r["und_kind"] == KIND_VIT).any() for r in rows])
  no_vae = np.array([(r["gen_sample_ids"] == PAD_SAMPLE).any() for r in rows])
  np.testing.assert_array_equal(no_text, no_loss)
  for hit, p in ((no_loss, 0.2), (no_vit, 0.5), (no_vae, 0.2)):
    assert abs(hit.mean() - p) < 4 * np.sqrt(p * (1 - p) / count), (hit.mean(), p)


def test_trainer_loader_batches_replay_after_resume(tmp_path):
  """The trainer's loader (one precompute of the tiny data): the stream index reaches the
  packer, rows drop, and a restored iterator yields bit-identical batches."""
  from launch import prepare
  from medq_jax.train import data as data_lib

  config = medq_uni.get_config("size=tiny,stage=2")
  with config.unlocked():
    config.data.data_dir = str(tmp_path / "data")
    config.data.max_slices_per_volume = 2
    config.data.ldct.num_angles = 30
    config.data.num_workers = 0
    config.train.batch_size = 8
    config.train.dropout_text, config.train.dropout_vit, config.train.dropout_vae = 0.3, 0.5, 0.3
  prepare.ensure_dataset(config.data)
  tokenizer_dir = prepare.ensure_tokenizer(config, str(tmp_path / "run"))
  spec = layout_lib.LayoutSpec.from_config(config.model, config.layout, 2)
  iterator = data_lib.make_train_iterator(config, tokenizer_dir, spec)
  next(iterator)
  state = iterator.get_state()
  expected = [data_lib.as_numpy_batch(next(iterator)) for _ in range(3)]
  resumed = data_lib.make_train_iterator(config, tokenizer_dir, spec)
  resumed.set_state(state)
  for batch in expected:
    again = data_lib.as_numpy_batch(next(resumed))
    for key in batch:
      np.testing.assert_array_equal(again[key], batch[key], err_msg=key)
  rows = np.concatenate([b["gen_sample_ids"] for b in expected])
  assert (rows == PAD_SAMPLE).any(axis=1).any()  # some VAE conditions dropped
  assert not np.concatenate([b["und_loss_mask"] for b in expected]).any(axis=1).all()
