"""Adaptive sampling: weights and allocation against a NumPy computation, no duplicates, seeded,
and the edge cases (all e_k = 0, budget above the candidates, an empty pool, bad rates)."""

import numpy as np
import pytest

from medq_jax.engine import sampling

RATES = {"CT/what/mild": 0.1, "MRI/how/severe": 0.6, "PET/yes-no/moderate": 0.3, "fundus": 0.0}


def _numpy_hamilton(budget, shares):
  """Independent oracle: floor, then one more to the largest remainders (stable: lower k)."""
  exact = budget * np.asarray(shares) / np.sum(shares)
  counts = np.floor(exact).astype(int)
  extra = sorted(range(len(shares)), key=lambda i: (-(exact[i] - counts[i]), i))
  for i in extra[: budget - counts.sum()]:
    counts[i] += 1
  return counts


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0])
def test_weights_follow_e_to_the_alpha(alpha):
  got = sampling.weights(RATES, alpha)
  rates = np.array(list(RATES.values()))
  powered = np.where(rates > 0, rates**alpha, 0.0)
  np.testing.assert_allclose(list(got.values()), powered / powered.sum(), rtol=1e-12)
  assert got["fundus"] == 0.0  # no failures: no share, whatever alpha


@pytest.mark.parametrize("budget", [0, 1, 7, 100, 2000])
def test_allocation_matches_numpy_when_candidates_suffice(budget):
  weight = sampling.weights(RATES, 1.5)
  candidates = {name: [f"{name}#{i}" for i in range(3000)] for name in RATES}
  drawn = sampling.sample(candidates, RATES, 1.5, budget, seed=0)
  want = _numpy_hamilton(budget, list(weight.values())) if budget else np.zeros(4, int)
  assert list(drawn.planned.values()) == want.tolist()
  assert list(drawn.drawn.values()) == want.tolist()
  assert len(drawn.selected) == budget and drawn.shortfall == 0


def test_capped_capability_shortfall_goes_to_the_others_by_weight():
  candidates = {
    "MRI/how/severe": ["m1", "m2"],  # weight 0.6 of 10 = 6, only 2 candidates
    "CT/what/mild": [f"c{i}" for i in range(20)],
    "PET/yes-no/moderate": [f"p{i}" for i in range(20)],
  }
  drawn = sampling.sample(candidates, RATES, 1.0, 10, seed=0)
  # 8 left for CT (0.1) and PET (0.3): Hamilton gives 2 and 6.
  assert drawn.drawn == {
    "CT/what/mild": 2,
    "MRI/how/severe": 2,
    "PET/yes-no/moderate": 6,
    "fundus": 0,
  }
  assert drawn.planned["MRI/how/severe"] == 6


def test_no_duplicates_across_capabilities_and_seeded():
  rng = np.random.default_rng(0)
  shared = [f"img{i}" for i in range(60)]
  candidates = {name: list(rng.choice(shared, 40)) for name in RATES}  # repeats within and across
  first = sampling.sample(candidates, RATES, 1.0, 50, seed=7)
  ids = [item for item, _ in first.selected]
  assert len(ids) == len(set(ids))
  assert all(item in candidates[name] for item, name in first.selected)
  assert sampling.sample(candidates, RATES, 1.0, 50, seed=7) == first
  assert sampling.sample(candidates, RATES, 1.0, 50, seed=8).selected != first.selected
  unique = set().union(*map(set, candidates.values()))
  everything = sampling.sample(candidates, RATES, 1.0, 1000, seed=7)
  assert {item for item, _ in everything.selected} == unique
  assert everything.shortfall == 1000 - len(unique) and "unspent" in everything.note


def test_all_error_rates_zero_is_uniform():
  rates = dict.fromkeys(RATES, 0.0)
  assert set(sampling.weights(rates, 1.0).values()) == {0.25}
  candidates = {name: [f"{name}#{i}" for i in range(10)] for name in rates}
  drawn = sampling.sample(candidates, rates, 1.0, 8, seed=0)
  assert set(drawn.drawn.values()) == {2}


def test_empty_pool_draws_nothing_and_says_so():
  drawn = sampling.sample({}, RATES, 1.0, 20, seed=0)
  assert drawn.selected == [] and drawn.shortfall == 20 and "no candidates" in drawn.note


@pytest.mark.parametrize(
  "rates, alpha, message",
  [
    ({"a": 1.2}, 1.0, r"error_rates\['a'\]: expected an error rate in \[0, 1\], got 1.2"),
    ({"a": float("nan")}, 1.0, r"error_rates\['a'\]"),
    ({"a": "0.3"}, 1.0, r"error_rates\['a'\]"),
    ({"a": 0.3}, -1.0, "alpha: expected a finite number >= 0"),
    ({}, 1.0, "no capability dimensions"),
  ],
)
def test_bad_inputs(rates, alpha, message):
  with pytest.raises(ValueError, match=message):
    sampling.weights(rates, alpha)


def test_candidates_without_a_rate_and_negative_budget():
  with pytest.raises(ValueError, match=r"capabilities \['x'\] have no error rate"):
    sampling.sample({"x": ["a"]}, RATES, 1.0, 5, seed=0)
  with pytest.raises(ValueError, match="budget: expected >= 0"):
    sampling.sample({}, RATES, 1.0, -1, seed=0)
