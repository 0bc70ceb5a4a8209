"""Packing several examples into one row (medq_jax.packing): the packed row's attention mask
equals a NumPy reference built the way BAGEL builds it (per example, from its splits in logical
order) and has no True between examples; ids are offset, RoPE positions restart; the model's
outputs for each example of a packed row equal its outputs alone; next-fit grouping under the
slot and token budgets; bad input is one clear error."""

import pickle
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import packing_testlib as lib

from medq_jax import layout as layout_lib
from medq_jax import packing
from medq_jax.models.attention import (
  TokenIds,
  allowed_mask,
)
from medq_jax.models.medq_uni import MedQUni, init_batch
from medq_jax.types import KIND_PAD, KIND_VIT, PAD_SAMPLE, SPLIT_CAUSAL, SPLIT_NOISE

DROPS = {1: ("vae_condition",), 2: ("instruction", "description"), 3: ("vit",)}


def _tokens(row):
  """Per token of the row's [und; gen] streams: (sample, split, mode, position) arrays."""
  cat = lambda key: np.concatenate([row[f"und_{key}"], row[f"gen_{key}"]])
  return cat("sample_ids"), cat("split_ids"), cat("split_modes"), cat("positions")


def _bagel_reference(row) -> np.ndarray:
  """[L, L] mask of a packed row over [und; gen], built per example as BAGEL's
  `prepare_attention_mask_per_sample` does: its tokens in logical order (split, then position),
  split by split (causal: lower triangle, full/noise: a block, both see all earlier splits;
  then every noise split hidden from all other splits), and the examples' blocks on the diagonal."""
  sample, split, mode, position = _tokens(row)
  size = len(sample)
  mask = np.zeros((size, size), bool)
  for example in sorted(set(sample.tolist()) - {PAD_SAMPLE}):
    members = np.flatnonzero(sample == example)
    order = members[np.lexsort((members, position[members], split[members]))]
    count = len(order)
    local = np.zeros((count, count), bool)
    splits = split[order]
    starts = np.flatnonzero(np.r_[True, splits[1:] != splits[:-1]])
    ends = np.r_[starts[1:], count]
    for start, end in zip(starts, ends):
      block = end - start
      causal = mode[order[start]] == SPLIT_CAUSAL
      local[start:end, start:end] = np.tril(np.ones((block, block), bool)) if causal else True
      local[start:end, :start] = True
    for start, end in zip(starts, ends):
      if mode[order[start]] == SPLIT_NOISE:
        local[:, start:end] = False
        local[start:end, start:end] = True
    mask[np.ix_(order, order)] = local
  return mask


def _packed_mask(row) -> np.ndarray:
  ids = TokenIds(*(jnp.asarray(x)[None] for x in _tokens(row)))
  return np.asarray(allowed_mask(ids, ids)[0])


@pytest.mark.parametrize("stage", [1, 2])
def test_packed_mask_equals_bagel_reference_and_isolates_examples(stage):
  rows = lib.single_rows(stage, 3, {1: DROPS[1], 2: DROPS[3]})
  packed = packing.pack_rows(rows, lib.spec(stage, 4), lib.SPECIAL["pad"])  # one empty slot
  mask = _packed_mask(packed)
  sample = _tokens(packed)[0]
  real = sample != PAD_SAMPLE
  np.testing.assert_array_equal(
    mask[np.ix_(real, real)], _bagel_reference(packed)[np.ix_(real, real)]
  )
  across = sample[:, None] != sample[None, :]
  assert not mask[across].any()  # no attention between examples (nor to/from padding)
  assert mask[np.ix_(real, real)].sum() > 0 and sample.max() == 2


def test_packed_ids_are_offset_and_positions_restart():
  rows = lib.single_rows(2, 3, {1: DROPS[1]})
  spec = lib.spec(2, 3)
  packed = packing.pack_rows(rows, spec, lib.SPECIAL["pad"])
  und_real = packed["und_kind"] != KIND_PAD
  split_base = 0
  start = 0
  for slot, row in enumerate(rows):
    length = packing.und_length(row)
    span = slice(start, start + length)
    start += length
    for key in ("token_ids", "kind", "positions", "split_modes", "targets", "loss_mask"):
      np.testing.assert_array_equal(packed[f"und_{key}"][span], row[f"und_{key}"][:length], key)
    assert (packed["und_sample_ids"][span] == slot).all()
    np.testing.assert_array_equal(
      packed["und_split_ids"][span], row["und_split_ids"][:length] + split_base
    )
    vit = row["und_kind"][:length] == KIND_VIT
    np.testing.assert_array_equal(
      packed["und_vit_index"][span][vit],
      row["und_vit_index"][:length][vit] + slot * spec.num_vit_tokens,
    )
    gen = slice(slot * spec.gen_len, (slot + 1) * spec.gen_len)
    np.testing.assert_array_equal(packed["gen_image_index"][gen], row["gen_image_index"] + 2 * slot)
    np.testing.assert_array_equal(packed["gen_positions"][gen], row["gen_positions"])
    np.testing.assert_array_equal(packed["vae_images"][2 * slot : 2 * slot + 2], row["vae_images"])
    np.testing.assert_array_equal(packed["vit_patches"][slot], row["vit_patches"])
    split_base += max(row["und_split_ids"][:length].max(), row["gen_split_ids"].max()) + 1
  assert not und_real[start:].any() and start == und_real.sum()
  assert (packed["und_token_ids"][start:] == lib.SPECIAL["pad"]).all()
  # the condition token each noised token points at: the same as recomputing it on the packed
  # row (an independent oracle: layout.condition_index matches latent positions in stream order),
  # and always inside the token's own example slot
  expected = layout_lib.condition_index(packed["gen_latent_pos"], packed["gen_noised"])
  np.testing.assert_array_equal(packed["gen_cond_index"], expected)
  pointed = packed["gen_cond_index"] >= 0
  assert pointed.sum() == sum(row["gen_noised"].sum() for row in rows)
  slot_of = np.arange(len(pointed)) // spec.gen_len
  np.testing.assert_array_equal(packed["gen_cond_index"][pointed] // spec.gen_len, slot_of[pointed])


def test_zeros_batch_has_the_packed_shapes():
  spec = lib.spec(2, 3, 400)
  packed = packing.pack_rows(lib.single_rows(2, 2), spec, 0)
  zeros = layout_lib.zeros_batch(spec, 2, 64)
  for key, value in packed.items():
    assert zeros[key].shape == (2,) + value.shape, key
    assert zeros[key].dtype == value.dtype, key


def _random_params(model_config):
  """Initialised parameters with every leaf perturbed (llm2vae is zero-initialised)."""
  params = jax.jit(MedQUni(model_config).init)(jax.random.key(0), init_batch(model_config))
  return lib.perturbed(nn.unbox(params["params"]), jax.random.key(1))


def _with_latents(row, latents, timesteps):
  return {**row, "gen_latents": latents, "gen_timesteps": timesteps}


def test_model_outputs_of_each_packed_example_equal_its_outputs_alone():
  stage, slots = 2, 4
  config = lib.config(stage)
  spec = lib.spec(stage, slots, pack_max_und_len=400)
  rows = lib.single_rows(stage, 3, {1: DROPS[1], 2: DROPS[2]})
  packed = packing.pack_rows(rows, spec, lib.SPECIAL["pad"])  # the last slot stays empty
  dim = config.model.latent_patch_size**2 * config.model.vae.z_channels
  rng = np.random.default_rng(0)
  latents = rng.normal(size=(slots * spec.gen_len, dim)).astype(np.float32)
  times = np.where(packed["gen_noised"], rng.random(slots * spec.gen_len), 0.0).astype(np.float32)
  model = MedQUni(config.model)
  params = _random_params(config.model)
  apply = jax.jit(lambda batch: model.apply({"params": params}, batch))
  batch = lambda row, *gen: {k: jnp.asarray(v)[None] for k, v in _with_latents(row, *gen).items()}
  out = apply(batch(packed, latents, times))
  assert np.isfinite(np.asarray(out["logits"])).all()
  start = 0
  for slot, row in enumerate(rows):
    gen = slice(slot * spec.gen_len, (slot + 1) * spec.gen_len)
    alone = apply(batch(row, latents[gen], times[gen]))
    length = packing.und_length(row)
    np.testing.assert_allclose(
      out["logits"][0, start : start + length], alone["logits"][0, :length], rtol=2e-5, atol=2e-5
    )
    real = row["gen_sample_ids"] != PAD_SAMPLE
    np.testing.assert_allclose(
      out["velocity"][0, gen][real], alone["velocity"][0][real], rtol=2e-5, atol=2e-5
    )
    start += length


def test_next_fit_keeps_order_and_budgets():
  lengths = [30, 50, 20, 90, 10, 10, 10, 60]
  groups = packing.next_fit(lengths, slots=3, budget=100)
  assert [i for g in groups for i in g] == list(range(len(lengths)))
  assert groups == [[0, 1, 2], [3, 4], [5, 6, 7]]
  for group in groups:
    assert len(group) <= 3 and sum(lengths[i] for i in group) <= 100
  with pytest.raises(layout_lib.LayoutError, match="101 und tokens exceeds the row budget 100"):
    packing.next_fit([101], slots=3, budget=100)
  assert packing.next_fit([], slots=3, budget=100) == []


def test_pack_rows_chunk_grouping_uses_every_example_once():
  rows = lib.single_rows(2, 7)
  spec = lib.spec(2, 3, pack_max_und_len=330)
  packed = packing.PackRows(spec, lib.SPECIAL["pad"])(rows)
  seen = []
  for row in packed:
    assert row["und_token_ids"].shape == (330,)
    for slot in range(3):
      images = row["vae_images"][2 * slot : 2 * slot + 2]
      if np.any(row["gen_sample_ids"][slot * spec.gen_len : (slot + 1) * spec.gen_len] >= 0):
        seen.append(next(i for i, r in enumerate(rows) if np.array_equal(r["vae_images"], images)))
  assert seen == list(range(7))


def test_bad_input_is_one_clear_error():
  rows = lib.single_rows(2, 3)
  spec = lib.spec(2, 2, pack_max_und_len=330)
  with pytest.raises(layout_lib.LayoutError, match="3 examples for 2 slots"):
    packing.pack_rows(rows, spec, 0)
  with pytest.raises(layout_lib.LayoutError, match="exceed layout.pack_max_und_len=330"):
    packing.pack_rows([rows[0], dict(rows[1], und_kind=np.ones_like(rows[1]["und_kind"]))], spec, 0)
  packed = packing.pack_rows(rows[:2], spec, 0)
  with pytest.raises(ValueError, match="row 0 is not a single-example row"):
    packing.pack_rows([packed], spec, 0)
  with pytest.raises(ValueError, match="expected >= 1"):
    lib.spec(2, 0).validate()
  with pytest.raises(ValueError, match="pack_max_und_len=100 is below layout.max_und_len=320"):
    lib.spec(2, 2, 100).validate()


def test_pack_rows_grouping_is_picklable_and_takes_empty_chunks():
  """Grain workers pickle the grouping; a chunk whose records were all skipped gives no row."""
  spec = lib.spec(2, 3, pack_max_und_len=330)
  group = packing.PackRows(spec, lib.SPECIAL["pad"])
  again = pickle.loads(pickle.dumps(group))
  rows = lib.single_rows(2, 4)
  for a, b in zip(group(rows), again(rows)):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert group([]) == []


def test_examples_in_batch_counts_examples_not_rows():
  """The trainer's examples/s: 3 examples in rows of 2 slots (one slot empty) are 3, not 2 rows."""
  rows = lib.single_rows(2, 3)
  spec = lib.spec(2, 2)
  packed = [
    packing.pack_rows(rows[:2], spec, lib.SPECIAL["pad"]),
    packing.pack_rows(rows[2:], spec, lib.SPECIAL["pad"]),
  ]
  batch = {k: np.stack([row[k] for row in packed]) for k in packed[0]}
  assert packing.examples_in_batch(batch) == 3
  single = {k: np.stack([row[k] for row in rows]) for k in rows[0]}
  assert packing.examples_in_batch(single) == 3
