"""Annotation routing (MedQ-Engine §2.3): trajectory entropy (Eq. 3), oracle agreement delta, the
three routes, and per-iteration annotation statistics (the paper's Table 3).

Routes for iteration t > 0 (the paper's rule, in its order):
  (a) H >= tau_H                      -> adopt the oracle's answer (the model is uncertain);
  (b) H < tau_H and delta < tau_ann   -> expert review (confident yet disagrees);
  (c) otherwise                       -> adopt the model's own answer.
At t = 0 (cold start) every sample goes to review. A sample without a usable signal (a NaN or
missing entropy, or no oracle answer) also goes to review: no rule can adopt what is not there.

Defaults, and why (the paper gives no values):
  TAU_H = ln 2: H is the mean token NLL, exp(-H) the geometric-mean probability of the model's
    own tokens; H >= ln 2 means that on average the model gave its tokens less than even odds.
  TAU_ANN = 0.5: MCQ agreement is 0 or 1 (same option letter), so any tau_ann in (0, 1] means
    "same letter"; for descriptions it is token F1, and 0.5 asks that at least about half of the
    words be shared. Both are configurable; calibrate tau_H to a target review rate with
    `tau_h_for_rate` once the model's entropies are known.
"""

from __future__ import annotations

import collections
import enum
import math
import re
from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from medq_jax.bench import extraction

TAU_H = math.log(2.0)
TAU_ANN = 0.5
_WORD = re.compile(r"[a-z0-9]+")


class Route(enum.StrEnum):
  ADOPT_ORACLE = "adopt_oracle"
  REVIEW = "review"
  ADOPT_SELF = "adopt_self"


def trajectory_entropy(token_logprobs, mask):
  """Eq. 3 on a padded batch: [N, L] log-probs of the model's own tokens, [N, L] bool mask of
  real tokens -> [N] mean negative log-likelihood (NaN for a row with no tokens). jit-able."""
  token_logprobs = jnp.asarray(token_logprobs, jnp.float32)
  mask = jnp.asarray(mask, bool)
  count = mask.sum(axis=-1)
  total = -jnp.where(mask, token_logprobs, 0.0).sum(axis=-1)
  return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)


def entropies(token_logprobs: Sequence) -> np.ndarray:
  """Eq. 3 per answer from a list of 1-D log-prob arrays; ValueError naming a bad answer."""
  rows = []
  for i, row in enumerate(token_logprobs):
    row = np.asarray(row, np.float64)
    if row.ndim != 1 or row.size == 0:
      raise ValueError(f"token_logprobs[{i}]: expected a non-empty 1-D array, got {row.shape}")
    if not np.isfinite(row).all() or (row > 1e-6).any():
      raise ValueError(f"token_logprobs[{i}]: expected finite log-probabilities <= 0")
    rows.append(row)
  if not rows:
    return np.zeros(0)
  length = max(r.size for r in rows)
  padded = np.zeros((len(rows), length), np.float32)
  mask = np.zeros((len(rows), length), bool)
  for i, r in enumerate(rows):
    padded[i, : r.size], mask[i, : r.size] = r, True
  return np.asarray(trajectory_entropy(padded, mask), np.float64)


def token_f1(a: str, b: str) -> float:
  """Bag-of-words F1 of lower-cased alphanumeric tokens (SQuAD-style); 1.0 when both empty."""
  ta, tb = _WORD.findall(a.lower()), _WORD.findall(b.lower())
  if not ta and not tb:
    return 1.0
  common = sum((collections.Counter(ta) & collections.Counter(tb)).values())
  if common == 0:
    return 0.0
  precision, recall = common / len(ta), common / len(tb)
  return 2 * precision * recall / (precision + recall)


def agreement(
  self_answer: str | None, oracle_answer: str | None, options: Mapping[str, str] | None
) -> float | None:
  """delta: for an MCQ (options given) 1.0 when both answers name the same option letter (the
  project's `extract_option`), else 0.0; for a description the token F1. None when either
  answer is missing (`route` then sends the sample to review)."""
  if self_answer is None or oracle_answer is None:
    return None
  if options:
    mine = extraction.extract_option(self_answer, options).letter
    theirs = extraction.extract_option(oracle_answer, options).letter
    return float(mine is not None and mine == theirs)
  return token_f1(self_answer, oracle_answer)


def route(
  entropy: float | None,
  delta: float | None,
  iteration: int,
  tau_h: float = TAU_H,
  tau_ann: float = TAU_ANN,
) -> tuple[Route, str]:
  """One sample's route and the reason. `delta` None = no oracle answer."""
  if iteration == 0:
    return Route.REVIEW, "iteration 0: everything is reviewed"
  if entropy is None or not math.isfinite(entropy):
    return Route.REVIEW, "no trajectory entropy"
  if delta is None:
    return Route.REVIEW, "no oracle answer"
  if entropy >= tau_h:
    return Route.ADOPT_ORACLE, f"uncertain: H={entropy:.4g} >= tau_H={tau_h:.4g}"
  if delta < tau_ann:
    return Route.REVIEW, f"confident but disagrees: delta={delta:.4g} < tau_ann={tau_ann:.4g}"
  return Route.ADOPT_SELF, f"confident and consistent: delta={delta:.4g} >= tau_ann"


def route_all(
  entropy: Sequence[float | None],
  delta: Sequence[float | None],
  iteration: int,
  tau_h: float = TAU_H,
  tau_ann: float = TAU_ANN,
) -> list[Route]:
  """`route` for each sample (same-length sequences)."""
  if iteration < 0:
    raise ValueError(f"iteration: expected >= 0, got {iteration}")
  if len(entropy) != len(delta):
    raise ValueError(f"entropy ({len(entropy)}) and delta ({len(delta)}): expected equal lengths")
  if not math.isfinite(tau_h) or not 0.0 <= tau_ann <= 1.0:
    raise ValueError(
      f"tau_h / tau_ann: expected finite tau_h and tau_ann in [0, 1], got {tau_h}, {tau_ann}"
    )
  return [route(h, d, iteration, tau_h, tau_ann)[0] for h, d in zip(entropy, delta)]


def tau_h_for_rate(entropies_: Sequence[float], uncertain_rate: float) -> float:
  """The tau_H at which a fraction `uncertain_rate` of these entropies is >= tau_H (quantile)."""
  values = np.asarray(entropies_, np.float64)
  values = values[np.isfinite(values)]
  if not values.size or not 0.0 < uncertain_rate <= 1.0:
    raise ValueError("tau_h_for_rate: expected finite entropies and a rate in (0, 1]")
  return float(np.quantile(values, 1.0 - uncertain_rate, method="higher"))


def iteration_stats(routes: Mapping[str, Route], decisions: Mapping) -> dict:
  """Table 3 for one iteration: route counts and rates over all samples; accept / edit / reject
  rates over the reviewed samples that have a decision (None before any decision)."""
  unknown = sorted(set(decisions) - {i for i, r in routes.items() if r == Route.REVIEW})
  if unknown:
    raise ValueError(f"decisions for samples not routed to review: {unknown[:5]}")
  n = len(routes)
  counts = collections.Counter(Route(r) for r in routes.values())
  # a decision is its text ("accept") or a review_queue.Decision
  decided = collections.Counter(getattr(d, "decision", d).lower() for d in decisions.values())
  bad = set(decided) - {"accept", "edit", "reject"}
  if bad:
    raise ValueError(f"decisions: expected accept / edit / reject, got {sorted(bad)}")
  n_decided = sum(decided.values())
  stats = {
    "samples": n,
    "reviewed": counts[Route.REVIEW],
    "adopted_oracle": counts[Route.ADOPT_ORACLE],
    "adopted_self": counts[Route.ADOPT_SELF],
    "review_rate": counts[Route.REVIEW] / n if n else None,
    "adopt_oracle_rate": counts[Route.ADOPT_ORACLE] / n if n else None,
    "adopt_self_rate": counts[Route.ADOPT_SELF] / n if n else None,
    "decided": n_decided,
    "pending": counts[Route.REVIEW] - n_decided,
  }
  for name in ("accept", "edit", "reject"):
    stats[f"{name}_rate"] = decided[name] / n_decided if n_decided else None
  return stats
