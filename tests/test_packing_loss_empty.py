"""Empty example slots of packed rows (medq_jax.train.step.make_loss_fn): a row closed before
K examples keeps its empty slots' draws of t and eps (so the draws of the other slots stay those
of the unpacked batch) and they add nothing to any loss term."""

import sys
from pathlib import Path

import jax
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import packing_testlib as lib
from test_packing_loss import DROPS, assert_same

from medq_jax import layout as layout_lib
from medq_jax import packing


@pytest.fixture(scope="module")
def setup():
  return lib.loss_setup()


def _without_loss(row):
  """A single row that contributes nothing to any loss term (the unpacked twin of an empty slot)."""
  return dict(
    row,
    gen_loss_mask=np.zeros_like(row["gen_loss_mask"]),
    und_loss_mask=np.zeros_like(row["und_loss_mask"]),
  )


def test_empty_slots_count_for_nothing(setup):
  """Rows [0, 1, 2] and [3, -, -]: the empty slots draw their t/eps but add no loss, exactly as
  two unpacked rows without loss tokens (the loss and its terms)."""
  rows = lib.single_rows(2, 4, DROPS)
  spec = lib.spec(2, 3, pack_max_und_len=400)
  packed = layout_lib.collate(
    [packing.pack_rows(rows[:3], spec, 0), packing.pack_rows(rows[3:], spec, 0)]
  )
  dummies = [_without_loss(rows[0]), _without_loss(rows[1])]
  rng, run = jax.random.key(3), setup["loss"]  # the loss alone: the gradient is tested above
  assert_same(run(packed, rng), run(layout_lib.collate(rows + dummies), rng))
