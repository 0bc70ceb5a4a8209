"""The loss over packed rows (medq_jax.train.step.make_loss_fn): a batch of B rows x K example
slots draws t, eps and the VAE posterior noise of the unpacked batch of its B*K examples in the
same order, and every term is normalised per token (rectified flow, CE: BAGEL's reduction) or per
target image (L1, 1-SSIM), so the packed loss and its gradient equal the unpacked ones."""

import sys
from pathlib import Path

import jax
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import packing_testlib as lib

from medq_jax import layout as layout_lib
from medq_jax import packing

DROPS = {1: ("vae_condition",), 2: ("instruction", "description")}


@pytest.fixture(scope="module")
def setup():
  return lib.loss_setup()


def assert_same(packed_out, unpacked_out):
  (_, packed_metrics), packed_grads = packed_out
  (_, metrics), grads = unpacked_out
  for key in metrics:
    np.testing.assert_allclose(packed_metrics[key], metrics[key], rtol=2e-5, atol=1e-6, err_msg=key)
  for a, b in zip(jax.tree_util.tree_leaves(packed_grads), jax.tree_util.tree_leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


def test_packed_loss_and_gradient_equal_unpacked(setup):
  rows = lib.single_rows(2, 4, DROPS)
  spec = lib.spec(2, 2, pack_max_und_len=330)
  packed = layout_lib.collate(
    [packing.pack_rows(rows[:2], spec, 0), packing.pack_rows(rows[2:], spec, 0)]
  )
  rng, run = jax.random.key(7), setup["value_and_grad"]
  packed_out, unpacked_out = run(packed, rng), run(layout_lib.collate(rows), rng)
  assert_same(packed_out, unpacked_out)
  metrics = unpacked_out[0][1]
  assert metrics["loss_ce"] > 0 and metrics["loss_l1"] > 0 and metrics["loss_rf"] > 0
  # another rng draws other t/eps: the equality is not one of constants
  assert abs(run(packed, jax.random.key(8))[0][0] - packed_out[0][0]) > 1e-4
