"""Human-judge alignment: kappa (scikit-learn's) equals the paper's Eq. 1 written out."""

import os

import numpy as np
import pytest

from medq_jax.bench import alignment
from medq_jax.bench.io_files import write_rows
from medq_jax.bench.schema import BenchInputError


def _paper_kappa(rater_a, rater_b, labels):
  """Independent oracle: paper Eq. 1 written out, w_ij = (i-j)^2/(k-1)^2."""
  k = len(labels)
  position = {label: i for i, label in enumerate(labels)}
  observed = np.zeros((k, k))
  for a, b in zip(rater_a, rater_b, strict=True):
    observed[position[a], position[b]] += 1
  weights = (np.arange(k)[:, None] - np.arange(k)[None, :]) ** 2 / (k - 1) ** 2
  expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
  return 1.0 - (weights * observed).sum() / (weights * expected).sum()


@pytest.mark.parametrize("seed", range(8))
def test_kappa_equals_paper_equation_on_random_ratings(seed):
  rng = np.random.default_rng(seed)
  human = rng.integers(0, 3, size=int(rng.integers(5, 300)))
  noise = rng.integers(-1, 2, size=human.size) * (rng.random(human.size) < 0.3)
  judge = np.clip(human + noise, 0, 2)
  observed = sorted(set(human.tolist()) | set(judge.tolist()))
  ours = alignment.quadratic_weighted_kappa(human.tolist(), judge.tolist())
  assert ours == pytest.approx(_paper_kappa(human, judge, observed), abs=1e-12)
  fixed = alignment.quadratic_weighted_kappa(human.tolist(), judge.tolist(), labels=[0, 1, 2])
  assert fixed == pytest.approx(_paper_kappa(human, judge, [0, 1, 2]), abs=1e-12)


def test_kappa_known_values_and_undefined_cases(recwarn):
  # perfect agreement; systematic reversal (worked by hand: sum wO = 4, sum wE = 2)
  assert alignment.quadratic_weighted_kappa([1, 2, 0, 1], [1, 2, 0, 1]) == pytest.approx(1.0)
  assert alignment.quadratic_weighted_kappa([0, 0, 2, 2], [2, 2, 0, 0]) == pytest.approx(-1.0)
  assert alignment.quadratic_weighted_kappa(
    [0, 0, 2, 2], [2, 2, 0, 0], labels=[0, 1, 2]
  ) == pytest.approx(-1.0)
  # only two of three levels used
  human, judge = [0, 2, 2, 0, 2], [0, 2, 0, 0, 2]
  assert alignment.quadratic_weighted_kappa(human, judge) == pytest.approx(
    _paper_kappa(human, judge, [0, 2])
  )
  # undefined (no expected disagreement): NaN, silently
  assert np.isnan(alignment.quadratic_weighted_kappa([2, 2, 2], [2, 2, 2]))
  assert np.isnan(alignment.quadratic_weighted_kappa([2, 2, 2], [2, 2, 2], labels=[0, 1, 2]))
  assert not recwarn.list


def test_confusion_matrix_counts_by_hand():
  human, judge = [0, 1, 2, 2, 1, 0, 2], [0, 2, 2, 1, 1, 0, 2]
  np.testing.assert_array_equal(
    alignment.confusion_matrix(human, judge), [[2, 0, 0], [0, 1, 1], [0, 1, 2]]
  )


def test_alignment_from_csv_and_judge_items(tmp_path):
  import json

  judge_items = tmp_path / "noref_items.jsonl"
  with open(judge_items, "w") as handle:
    for index, (c, p) in enumerate([(2, 2), (1, 0), (0, 1), (2, 1.5)]):
      handle.write(
        json.dumps({"index": str(index), "scores": {"completeness": c, "preciseness": p}}) + "\n"
      )
  human = str(tmp_path / "human.csv")
  write_rows(
    human,
    [
      {"index": str(i), "dimension": d, "human_score": s}
      for i, d, s in [
        ("0", "completeness", 2),
        ("1", "completeness", 1),
        ("2", "completeness", 1),
        ("3", "completeness", 2),
        ("0", "preciseness", 2),
        ("1", "preciseness", 0),
        ("2", "preciseness", 1),
        ("3", "preciseness", 2),
      ]
    ],
  )
  pairs = alignment.load_pairs(human, str(judge_items))
  assert pairs["completeness"] == ([2, 1, 1, 2], [2, 1, 0, 2])
  assert pairs["preciseness"] == ([2, 0, 1, 2], [2, 0, 1, 2])  # 1.5 rounds to 2
  results = {r.dimension: r for r in alignment.align(pairs)}
  assert results["completeness"].accuracy == pytest.approx(3 / 4)
  assert results["completeness"].kappa == pytest.approx(
    _paper_kappa([2, 1, 1, 2], [2, 1, 0, 2], [0, 1, 2])
  )
  assert results["preciseness"].kappa == pytest.approx(1.0)
  path = alignment.plot_confusion(results["completeness"], str(tmp_path / "plots" / "c.png"))
  assert os.path.getsize(path) > 1000


def test_alignment_csv_errors_name_row_and_field(tmp_path):
  bad = str(tmp_path / "bad.csv")
  write_rows(
    bad,
    [
      {"index": "0", "dimension": "completeness", "human_score": "2", "judge_score": "2"},
      {"index": "1", "dimension": "fluency", "human_score": "1", "judge_score": "1"},
    ],
  )
  with pytest.raises(
    BenchInputError, match=r"bad\.csv: row 2 \(index '1'\), field 'dimension': unknown dimension"
  ):
    alignment.load_pairs(bad)
  bad_score = str(tmp_path / "score.csv")
  write_rows(
    bad_score, [{"index": "0", "dimension": "consistency", "human_score": "3", "judge_score": "2"}]
  )
  with pytest.raises(
    BenchInputError, match=r"row 1 \(index '0'\), field 'human_score': score '3' is not one of"
  ):
    alignment.load_pairs(bad_score)
  no_judge = str(tmp_path / "nojudge.csv")
  write_rows(no_judge, [{"index": "0", "dimension": "consistency", "human_score": "2"}])
  with pytest.raises(BenchInputError, match="no 'judge_score' column"):
    alignment.load_pairs(no_judge)
