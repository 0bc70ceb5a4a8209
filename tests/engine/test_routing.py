"""Annotation routing: Eq. 3 against NumPy, the agreement measures, every route of the paper's
rule, iteration 0, missing signals, and Table 3's statistics."""

import math

import jax
import numpy as np
import pytest

from medq_jax.engine import review_queue, routing
from medq_jax.engine.routing import Route

OPTIONS = {"A": "Yes", "B": "No"}


def test_trajectory_entropy_matches_numpy_and_jits():
  rng = np.random.default_rng(0)
  rows = [np.log(rng.uniform(0.01, 1.0, size=n)) for n in (1, 5, 17)]
  expected = [-r.mean() for r in rows]
  np.testing.assert_allclose(routing.entropies(rows), expected, rtol=1e-6)
  padded = np.zeros((3, 17), np.float32)
  mask = np.zeros((3, 17), bool)
  for i, r in enumerate(rows):
    padded[i, : r.size], mask[i, : r.size] = r, True
  padded[~mask] = -1e9  # padding values must not leak in
  jitted = jax.jit(routing.trajectory_entropy)(padded, mask)
  np.testing.assert_allclose(np.asarray(jitted), expected, rtol=1e-5)
  empty = routing.trajectory_entropy(np.zeros((1, 4)), np.zeros((1, 4), bool))
  assert math.isnan(float(empty[0]))


def test_certain_answer_has_zero_entropy_and_even_odds_is_tau_h():
  assert routing.entropies([np.zeros(4)])[0] == 0.0
  assert routing.entropies([np.log([0.5, 0.5])])[0] == pytest.approx(routing.TAU_H)


@pytest.mark.parametrize(
  "rows, message",
  [
    ([np.array([])], r"token_logprobs\[0\]: expected a non-empty"),
    ([np.array([-0.1]), np.array([0.3])], r"token_logprobs\[1\]: expected finite"),
    ([np.array([np.nan])], r"token_logprobs\[0\]"),
    ([np.zeros((2, 2))], "1-D"),
  ],
)
def test_bad_log_probs(rows, message):
  with pytest.raises(ValueError, match=message):
    routing.entropies(rows)


def test_token_f1_by_hand():
  # "severe motion artifact" vs "motion artifact is severe here": common 3, P=3/3, R=3/5
  assert routing.token_f1("Severe motion artifact.", "motion artifact is severe here") == (
    pytest.approx(2 * 1 * 0.6 / 1.6)
  )
  assert routing.token_f1("noise noise", "noise") == pytest.approx(2 * 0.5 * 1 / 1.5)
  assert routing.token_f1("", "") == 1.0 and routing.token_f1("a", "") == 0.0
  assert routing.token_f1("blur", "noise") == 0.0


def test_mcq_agreement_uses_the_option_letter():
  assert routing.agreement("B", "The answer is B.", OPTIONS) == 1.0
  assert routing.agreement("A. Yes", "No", OPTIONS) == 0.0
  assert routing.agreement("I cannot determine", "I cannot determine", OPTIONS) == 0.0
  assert routing.agreement("B", None, OPTIONS) is None
  assert routing.agreement(None, "noise", None) is None


@pytest.mark.parametrize(
  "entropy, delta, expected",
  [
    (1.0, 1.0, Route.ADOPT_ORACLE),  # (a) uncertain, even when agreeing
    (1.0, 0.0, Route.ADOPT_ORACLE),
    (routing.TAU_H, 1.0, Route.ADOPT_ORACLE),  # H >= tau_H, boundary included
    (0.1, 0.2, Route.REVIEW),  # (b) confident, disagrees
    (0.1, 0.5, Route.ADOPT_SELF),  # (c) delta >= tau_ann, boundary included
    (0.1, 1.0, Route.ADOPT_SELF),
    (float("nan"), 1.0, Route.REVIEW),
    (None, 1.0, Route.REVIEW),
    (0.1, None, Route.REVIEW),
    (1.0, None, Route.REVIEW),  # uncertain but nothing to adopt
  ],
)
def test_routes(entropy, delta, expected):
  assert routing.route(entropy, delta, iteration=1)[0] == expected
  assert routing.route(entropy, delta, iteration=0)[0] == Route.REVIEW


def test_route_all_and_thresholds():
  rng = np.random.default_rng(3)
  h, d = rng.uniform(0, 2, 100), rng.uniform(0, 1, 100)
  routes = routing.route_all(h, d, iteration=2, tau_h=1.2, tau_ann=0.3)
  expected = np.where(h >= 1.2, "adopt_oracle", np.where(d < 0.3, "review", "adopt_self"))
  assert [r.value for r in routes] == expected.tolist()
  assert set(routing.route_all(h, d, iteration=0)) == {Route.REVIEW}
  with pytest.raises(ValueError, match="equal lengths"):
    routing.route_all(h, d[:5], 1)
  with pytest.raises(ValueError, match="iteration"):
    routing.route_all(h, d, -1)
  with pytest.raises(ValueError, match="tau_ann"):
    routing.route_all(h, d, 1, tau_ann=2.0)


def test_tau_h_for_rate_reaches_the_rate():
  values = np.random.default_rng(4).exponential(size=1000)
  tau = routing.tau_h_for_rate(values, 0.18)
  assert np.mean(values >= tau) == pytest.approx(0.18, abs=0.002)
  with pytest.raises(ValueError):
    routing.tau_h_for_rate([np.nan], 0.2)


def test_iteration_stats_like_table_3():
  routes = {f"s{i}": Route.REVIEW for i in range(10)}
  routes.update({f"o{i}": Route.ADOPT_ORACLE for i in range(5)})
  routes.update({f"m{i}": Route.ADOPT_SELF for i in range(5)})
  decisions = {f"s{i}": d for i, d in enumerate(["accept"] * 5 + ["Edit"] * 3 + ["reject"])}
  stats = routing.iteration_stats(routes, decisions)
  assert stats["review_rate"] == 0.5 and stats["adopt_self_rate"] == 0.25
  assert stats["decided"] == 9 and stats["pending"] == 1
  assert stats["accept_rate"] == pytest.approx(5 / 9)
  assert stats["edit_rate"] == pytest.approx(3 / 9) and stats["reject_rate"] == pytest.approx(1 / 9)
  as_objects = {i: review_queue.Decision(i, d.lower()) for i, d in decisions.items()}
  assert routing.iteration_stats(routes, as_objects) == stats
  empty = routing.iteration_stats({}, {})
  assert empty["review_rate"] is None and empty["accept_rate"] is None
  with pytest.raises(ValueError, match=r"not routed to review: \['o1'\]"):
    routing.iteration_stats(routes, {"o1": "accept"})
  with pytest.raises(ValueError, match="approve"):
    routing.iteration_stats(routes, {"s1": "approve"})
