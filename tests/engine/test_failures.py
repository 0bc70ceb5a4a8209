"""Failure mining: error rates, persistent failures, capability vectors and Eq. 1's e_k,
against a direct NumPy/loop computation."""

import numpy as np
import pytest

from medq_jax.engine import failures

MODALITIES = ("MRI", "CT", "Endoscopy")
QTYPES = ("Yes-or-No", "What", "How")
LEVELS = ("none", "mild", "severe")


def _items(rng, n):
  return [
    {
      "index": str(i),
      "modality": MODALITIES[rng.integers(3)],
      "question_type": QTYPES[rng.integers(3)],
      "degradation_level": LEVELS[rng.integers(3)],
    }
    for i in range(n)
  ]


def test_evaluate_matches_a_loop_over_items():
  rng = np.random.default_rng(0)
  runs, n, gamma = 5, 200, 0.6
  correct = rng.random((runs, n)) < rng.random(n)  # per-item skill
  items = _items(rng, n)
  result = failures.evaluate(correct, items, gamma)
  wrong = (~correct).sum(axis=0)
  np.testing.assert_allclose(result.error_rate, wrong / runs)
  # 0.6 over 5 runs: 3 wrong is 0.6, not a failure (strict); 4 and 5 are.
  np.testing.assert_array_equal(result.failed, wrong >= 4)
  expected = {}
  for field in failures.CAPABILITY_FIELDS:
    for value in {item[field] for item in items}:
      members = [i for i, item in enumerate(items) if item[field] == value]
      expected[f"{field}={value}"] = sum(result.failed[i] for i in members) / len(members)
  assert result.errors.keys() == expected.keys()
  for name, value in expected.items():
    assert result.errors[name] == pytest.approx(value)
  assert result.capabilities.sum(axis=1).tolist() == [3] * n  # multi-hot: one value per field
  assert result.runs == runs and result.gamma == gamma


def test_cross_capabilities_are_one_hot_over_combinations():
  rng = np.random.default_rng(1)
  items = _items(rng, 120)
  correct = rng.random((3, 120)) < 0.5
  result = failures.evaluate(correct, items, 0.5, cross=True)
  assert result.capabilities.sum(axis=1).tolist() == [1] * 120
  combos = {"|".join(f"{f}={it[f]}" for f in failures.CAPABILITY_FIELDS) for it in items}
  assert set(result.names) == combos
  for name in result.names:
    members = [
      i
      for i, it in enumerate(items)
      if "|".join(f"{f}={it[f]}" for f in failures.CAPABILITY_FIELDS) == name
    ]
    assert result.errors[name] == pytest.approx(np.mean(result.failed[members]))


def test_single_run_and_no_failures():
  items = [{"modality": "CT", "question_type": "What", "degradation_level": "none"}] * 3
  one = failures.evaluate(np.array([[True, False, True]]), items, 0.6)
  assert one.failed.tolist() == [False, True, False] and one.runs == 1
  none = failures.evaluate(np.ones((5, 3), bool), items, 0.6)
  assert not none.failed.any()
  assert set(none.errors.values()) == {0.0}


def test_zero_one_integers_equal_booleans():
  rng = np.random.default_rng(2)
  correct = rng.random((4, 30)) < 0.5
  np.testing.assert_array_equal(
    failures.error_rates(correct.astype(np.int32)), failures.error_rates(correct)
  )


def test_missing_metadata_names_the_item_and_field():
  items = [
    {"index": "0", "modality": "CT", "question_type": "What", "degradation_level": "none"},
    {"index": "7", "modality": "CT", "question_type": "What"},
  ]
  with pytest.raises(ValueError, match=r"item 1 \(index='7'\).*'degradation_level'"):
    failures.evaluate(np.ones((2, 2), bool), items, 0.6)
  items[1]["degradation_level"] = "  "
  with pytest.raises(ValueError, match="'degradation_level'"):
    failures.capability_vectors(items)


@pytest.mark.parametrize(
  "correct, message",
  [
    (np.ones(3, bool), r"expected \[runs, items\]"),
    (np.ones((0, 3), bool), "at least one run"),
    (np.ones((2, 0), bool), "no dev items"),
    (np.array([[1.0, np.nan]]), r"correct\[0, 1\]: expected bool or 0/1"),
    (np.array([[1, 2]]), r"correct\[0, 1\]"),
    (np.array([["yes", "no"]]), "dtype"),
  ],
)
def test_bad_correctness(correct, message):
  items = [{"modality": "CT", "question_type": "What", "degradation_level": "none"}] * 3
  with pytest.raises(ValueError, match=message):
    failures.evaluate(correct, items[: np.shape(correct)[-1]], 0.6)


def test_bad_gamma_and_item_count():
  items = [{"modality": "CT", "question_type": "What", "degradation_level": "none"}] * 2
  for gamma in (float("nan"), -0.1, 1.5):
    with pytest.raises(ValueError, match="gamma"):
      failures.evaluate(np.ones((2, 2), bool), items, gamma)
  with pytest.raises(ValueError, match="items: expected 3"):
    failures.evaluate(np.ones((2, 3), bool), items, 0.6)


def test_capability_without_dev_items_is_refused():
  with pytest.raises(ValueError, match=r"\['b'\]: no dev item"):
    failures.capability_errors([True, False], [[True, False], [True, False]], ["a", "b"])
