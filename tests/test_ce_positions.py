"""The LM head at the description's positions only (BAGEL's lm_head(h[ce_loss_indexes])):
`model.max_ce_tokens` per example, enforced by the layout with an error naming the example, and
the same loss and gradient as the LM head over every und position."""

import dataclasses
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import packing_testlib as lib

from medq_jax import layout as layout_lib
from medq_jax import packing
from medq_jax.train import step as step_lib


def test_loss_positions_equal_numpy():
  rng = np.random.default_rng(0)
  mask = (rng.random((4, 30)) < 0.3).astype(np.float32)
  mask[1] = 0.0  # a row without a description (dropped)
  mask[2, :6] = 1.0
  mask[2, 6:] = 0.0  # exactly `count` loss tokens
  count = 6
  mask[0] = 0.0
  mask[0, [3, 9, 20]] = 1.0
  mask[3] = 0.0
  mask[3, [0, 29]] = 1.0  # position 0 carries a loss: the filler must not count it twice
  positions, valid = map(np.asarray, step_lib.loss_positions(mask, count))
  for row in range(4):
    expected = np.flatnonzero(mask[row])
    np.testing.assert_array_equal(positions[row, : expected.size], expected)
    np.testing.assert_array_equal(valid[row], np.arange(count) < expected.size)
  gathered = np.where(valid, np.take_along_axis(mask, positions, axis=1), 0.0)
  np.testing.assert_array_equal(gathered.sum(1), mask.sum(1))


def test_ce_positions_per_row():
  cfg = lib.config(2)
  assert cfg.model.max_ce_tokens == 0  # tiny: every position
  cfg.model.max_ce_tokens = 128
  assert step_lib.ce_positions(cfg.model, 320, 1) == 128
  assert step_lib.ce_positions(cfg.model, 320, 2) == 256
  assert step_lib.ce_positions(cfg.model, 200, 2) == 200  # the cap reaches the row: every position
  cfg.model.max_ce_tokens = 0
  assert step_lib.ce_positions(cfg.model, 320, 1) == 320


def test_an_example_over_the_limit_is_a_layout_error_naming_it():
  spec = dataclasses.replace(lib.spec(2), max_ce_tokens=5)
  with pytest.raises(
    layout_lib.LayoutError,
    match=r"example ex3: \d+ description tokens.*"
    r"model.max_ce_tokens=5",
  ):
    layout_lib.pack_example(lib.example(3), lib.CharTokenizer(), spec, lib.SPECIAL)
  cfg = lib.config(2)
  cfg.model.max_ce_tokens = -1
  with pytest.raises(ValueError, match="model.max_ce_tokens: expected >= 0"):
    layout_lib.LayoutSpec.from_config(cfg.model, cfg.layout, 2)


@pytest.fixture(scope="module")
def rows():
  return lib.single_rows(2, 4, {2: ("instruction", "description")})


def test_loss_and_gradient_at_loss_positions_equal_every_position(rows):
  """The descriptions here carry 11-53 CE tokens; a cap of 53 (the longest: the boundary, where
  a row's positions are all loss positions) gives the loss and gradient of the LM head over all
  320 und positions, one example per row and two packed per row. The parameters do not depend
  on the cap, so one model serves both losses."""
  longest = max(int(np.count_nonzero(r["und_loss_mask"])) for r in rows)
  spec = lib.spec(2, 2, pack_max_und_len=330)
  batches = dict(
    single=layout_lib.collate(rows),
    packed=layout_lib.collate(
      [packing.pack_rows(rows[:2], spec, 0), packing.pack_rows(rows[2:], spec, 0)]
    ),
  )
  cfg = lib.config(2)
  model, vae, params, vae_params = lib.perturbed_models(cfg)
  runs = {}
  for cap in (0, longest):
    model_config = cfg.model.copy_and_resolve_references()
    model_config.max_ce_tokens = cap
    assert step_lib.ce_positions(model_config, 320, 2) == (2 * cap if cap else 320)  # gathered
    loss_fn = step_lib.make_loss_fn(model, vae, model_config, cfg.train)
    runs[cap] = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  for name, batch in batches.items():
    (_, ref_metrics), ref_grads = runs[0](params, vae_params, batch, jax.random.key(5))
    (_, metrics), grads = runs[longest](params, vae_params, batch, jax.random.key(5))
    assert ref_metrics["loss_ce"] > 0
    for key in ref_metrics:
      np.testing.assert_allclose(
        metrics[key], ref_metrics[key], rtol=2e-5, atol=1e-6, err_msg=f"{name} {key}"
      )
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6, err_msg=name)
