"""Human-judge alignment: kappa equals scikit-learn's quadratic weighted kappa."""

import os

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, confusion_matrix as sk_confusion

from medq_jax.bench import alignment
from medq_jax.bench.io_files import write_rows
from medq_jax.bench.schema import BenchInputError


@pytest.mark.parametrize("seed", range(8))
def test_kappa_equals_sklearn_on_random_ratings(seed):
  rng = np.random.default_rng(seed)
  human = rng.integers(0, 3, size=int(rng.integers(5, 300)))
  noise = rng.integers(-1, 2, size=human.size) * (rng.random(human.size) < 0.3)
  judge = np.clip(human + noise, 0, 2)
  ours = alignment.quadratic_weighted_kappa(human.tolist(), judge.tolist())
  assert ours == pytest.approx(cohen_kappa_score(human, judge, weights="quadratic"), abs=1e-12)
  fixed = alignment.quadratic_weighted_kappa(human.tolist(), judge.tolist(), labels=[0, 1, 2])
  assert fixed == pytest.approx(cohen_kappa_score(human, judge, weights="quadratic", labels=[0, 1, 2]), abs=1e-12)


def test_kappa_edge_cases_match_sklearn():
  # only two of three levels used; perfect agreement; systematic disagreement
  for human, judge in (([0, 2, 2, 0, 2], [0, 2, 0, 0, 2]), ([1, 2, 0, 1], [1, 2, 0, 1]), ([0, 0, 2, 2], [2, 2, 0, 0])):
    assert alignment.quadratic_weighted_kappa(human, judge) == pytest.approx(
        cohen_kappa_score(human, judge, weights="quadratic"))
  assert np.isnan(alignment.quadratic_weighted_kappa([2, 2, 2], [2, 2, 2]))


def test_confusion_matrix_matches_sklearn():
  human, judge = [0, 1, 2, 2, 1, 0, 2], [0, 2, 2, 1, 1, 0, 2]
  np.testing.assert_array_equal(alignment.confusion_matrix(human, judge), sk_confusion(human, judge, labels=[0, 1, 2]))


def test_alignment_from_csv_and_judge_items(tmp_path):
  import json
  judge_items = tmp_path / "noref_items.jsonl"
  with open(judge_items, "w") as handle:
    for index, (c, p) in enumerate([(2, 2), (1, 0), (0, 1), (2, 1.5)]):
      handle.write(json.dumps({"index": str(index), "scores": {"completeness": c, "preciseness": p}}) + "\n")
  human = str(tmp_path / "human.csv")
  write_rows(human, [{"index": str(i), "dimension": d, "human_score": s} for i, d, s in [
      ("0", "completeness", 2), ("1", "completeness", 1), ("2", "completeness", 1), ("3", "completeness", 2),
      ("0", "preciseness", 2), ("1", "preciseness", 0), ("2", "preciseness", 1), ("3", "preciseness", 2)]])
  pairs = alignment.load_pairs(human, str(judge_items))
  assert pairs["completeness"] == ([2, 1, 1, 2], [2, 1, 0, 2])
  assert pairs["preciseness"] == ([2, 0, 1, 2], [2, 0, 1, 2])  # 1.5 rounds to 2
  results = {r.dimension: r for r in alignment.align(pairs)}
  assert results["completeness"].accuracy == pytest.approx(3 / 4)
  assert results["completeness"].kappa == pytest.approx(
      cohen_kappa_score([2, 1, 1, 2], [2, 1, 0, 2], weights="quadratic", labels=[0, 1, 2]))
  assert results["preciseness"].kappa == pytest.approx(1.0)
  path = alignment.plot_confusion(results["completeness"], str(tmp_path / "plots" / "c.png"))
  assert os.path.getsize(path) > 1000


def test_alignment_csv_errors_name_row_and_field(tmp_path):
  bad = str(tmp_path / "bad.csv")
  write_rows(bad, [{"index": "0", "dimension": "completeness", "human_score": "2", "judge_score": "2"},
                   {"index": "1", "dimension": "fluency", "human_score": "1", "judge_score": "1"}])
  with pytest.raises(BenchInputError, match=r"bad\.csv: row 2 \(index '1'\), field 'dimension': unknown dimension"):
    alignment.load_pairs(bad)
  bad_score = str(tmp_path / "score.csv")
  write_rows(bad_score, [{"index": "0", "dimension": "consistency", "human_score": "3", "judge_score": "2"}])
  with pytest.raises(BenchInputError, match=r"row 1 \(index '0'\), field 'human_score': score '3' is not one of"):
    alignment.load_pairs(bad_score)
  no_judge = str(tmp_path / "nojudge.csv")
  write_rows(no_judge, [{"index": "0", "dimension": "consistency", "human_score": "2"}])
  with pytest.raises(BenchInputError, match="no 'judge_score' column"):
    alignment.load_pairs(no_judge)
