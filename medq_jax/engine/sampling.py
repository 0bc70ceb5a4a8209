"""Adaptive sampling (MedQ-Engine §2.3): the annotation budget B goes to capability dimensions
in proportion to w_k = e_k^alpha / sum_j e_j^alpha (e_k: the per-capability error rate of Eq. 1),
and each capability's share is drawn from its retrieved candidates, seeded, without duplicates.

Allocation is Hamilton's largest-remainder rounding of B * w_k (remainder ties to the lower k),
capped by what each capability can still supply; the shortfall of a capped capability is
reallocated the same way over the capabilities with candidates left, until the budget is spent
or no candidate is left. A pool id retrieved for several capabilities is drawn at most once (for
the first capability that draws it; capabilities draw in descending weight, ties by k).
When every e_k is 0 (no failures anywhere) the weights are uniform over the capabilities:
nothing marks one capability as weaker than another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Sample:
  """The drawn annotation set: `selected` (pool id, capability) pairs; per-capability weights,
  planned shares (before caps) and counts drawn; `shortfall` = budget - len(selected)."""

  selected: list[tuple[str, str]]
  weights: dict[str, float]
  planned: dict[str, int]
  drawn: dict[str, int]
  shortfall: int
  note: str


def weights(error_rates: Mapping[str, float], alpha: float) -> dict[str, float]:
  """w_k = e_k^alpha / sum_j e_j^alpha; uniform when every e_k is 0. ValueError naming a bad e_k."""
  if not np.isfinite(alpha) or alpha < 0:
    raise ValueError(f"alpha: expected a finite number >= 0, got {alpha}")
  if not error_rates:
    raise ValueError("error_rates: no capability dimensions")
  for name, rate in error_rates.items():
    if not (isinstance(rate, (int, float, np.floating)) and 0.0 <= float(rate) <= 1.0):
      raise ValueError(f"error_rates[{name!r}]: expected an error rate in [0, 1], got {rate!r}")
  names = list(error_rates)
  rates = np.array([float(error_rates[name]) for name in names])
  if not rates.any():
    return {name: 1.0 / len(names) for name in names}
  powered = np.where(rates > 0, rates ** float(alpha), 0.0)  # e_k = 0 keeps weight 0, any alpha
  return dict(zip(names, (powered / powered.sum()).tolist()))


def largest_remainder(budget: int, shares: Sequence[float]) -> np.ndarray:
  """Integers summing to `budget`, proportional to `shares` (Hamilton; ties to the lower index)."""
  shares = np.asarray(shares, np.float64)
  if budget < 0 or not len(shares) or shares.sum() <= 0:
    return np.zeros(len(shares), np.int64)
  exact = budget * shares / shares.sum()
  counts = np.floor(exact).astype(np.int64)
  remainders = exact - counts
  order = np.lexsort((np.arange(len(shares)), -remainders))
  counts[order[: budget - counts.sum()]] += 1
  return counts


def allocate(
  budget: int, weight: Mapping[str, float], capacity: Mapping[str, int]
) -> dict[str, int]:
  """Shares of `budget` by `weight`, none above its `capacity`; capped shortfalls reallocated
  over the others by weight (uncapped ones with weight 0 get nothing unless all left are 0)."""
  names = list(weight)
  quota = dict.fromkeys(names, 0)
  left = min(int(budget), sum(int(capacity.get(name, 0)) for name in names))
  while left > 0:
    open_names = [name for name in names if quota[name] < capacity.get(name, 0)]
    shares = [weight[name] for name in open_names]
    if sum(shares) <= 0:  # only weight-0 capabilities have room: share what is left evenly
      shares = [1.0] * len(open_names)
    for name, count in zip(open_names, largest_remainder(left, shares)):
      take = min(int(count), capacity.get(name, 0) - quota[name])
      quota[name] += take
      left -= take
  return quota


def sample(
  candidates: Mapping[str, Sequence[str]],
  error_rates: Mapping[str, float],
  alpha: float,
  budget: int,
  seed: int,
) -> Sample:
  """Draws min(budget, unique candidates) pool ids: capability k's retrieved `candidates[k]`
  (ids; duplicates within and across capabilities allowed) with shares by `weights(...)`."""
  if budget < 0:
    raise ValueError(f"budget: expected >= 0, got {budget}")
  unknown = sorted(set(candidates) - set(error_rates))
  if unknown:
    raise ValueError(f"candidates: capabilities {unknown} have no error rate")
  weight = weights(error_rates, alpha)
  rng = np.random.default_rng(seed)
  # Each capability's candidates, deduplicated in first-seen order, in a seeded random order.
  pools = {}
  for name in weight:
    unique = list(dict.fromkeys(candidates.get(name, ())))
    pools[name] = [unique[i] for i in rng.permutation(len(unique))]
  planned = dict(zip(weight, largest_remainder(budget, list(weight.values())).tolist()))
  taken: set[str] = set()
  selected: list[tuple[str, str]] = []
  drawn = dict.fromkeys(weight, 0)
  order = sorted(weight, key=lambda name: (-weight[name], list(weight).index(name)))
  while len(selected) < budget:
    capacity = {
      name: drawn[name] + sum(item not in taken for item in pools[name]) for name in weight
    }
    quota = allocate(budget, weight, capacity)
    progress = False
    for name in order:
      for item in pools[name]:
        if drawn[name] >= quota[name] or len(selected) >= budget:
          break
        if item not in taken:
          taken.add(item)
          selected.append((item, name))
          drawn[name] += 1
          progress = True
    if not progress:
      break
  shortfall = budget - len(selected)
  note = (
    f"{shortfall} of the budget {budget} unspent: only {len(selected)} unique candidates"
    if shortfall
    else ""
  )
  if not any(pools.values()):
    note = f"no candidates (empty pool or nothing above tau_sim): 0 of {budget} drawn"
  return Sample(selected, weight, planned, drawn, shortfall, note)
