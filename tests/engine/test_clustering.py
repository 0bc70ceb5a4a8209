"""Failure clustering: planted clusters recovered, labels and silhouettes equal scikit-learn's
own, prototypes are centroids, small and bad inputs handled by name."""

import numpy as np
import pytest
from scipy import spatial
from sklearn import cluster as sk_cluster
from sklearn import datasets, metrics

from medq_jax.engine import clustering


def _blobs(n_clusters, n=240, seed=0):
  x, y = datasets.make_blobs(
    n_samples=n, centers=n_clusters, n_features=12, cluster_std=0.6, random_state=seed
  )
  return x.astype(np.float32), y


def _by_first_appearance(labels):
  order = {}
  return np.array([order.setdefault(label, len(order)) for label in labels])


def test_condensed_distances_equal_scipy_pdist():
  x = np.random.default_rng(5).normal(size=(300, 7))
  np.testing.assert_allclose(
    clustering.condensed_distances(x, block=64), spatial.distance.pdist(x), rtol=1e-9, atol=1e-9
  )


def test_same_partitions_as_sklearn_on_unstructured_data():
  x = np.random.default_rng(6).normal(size=(150, 10))  # no planted structure: a harder tree
  tree = clustering.ward_tree(x)
  for k in (2, 7, 20):
    theirs = sk_cluster.AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(x)
    np.testing.assert_array_equal(clustering.cut(tree, k), _by_first_appearance(theirs))


@pytest.mark.parametrize("planted", [3, 5])
def test_recovers_planted_clusters_and_equals_sklearn(planted):
  x, truth = _blobs(planted)
  result = clustering.cluster(x, visual_dim=8, k_range=(2, 8))
  assert result.n_clusters == planted
  assert metrics.adjusted_rand_score(truth, result.labels) == pytest.approx(1.0)
  theirs = sk_cluster.AgglomerativeClustering(n_clusters=planted, linkage="ward").fit_predict(x)
  np.testing.assert_array_equal(result.labels, _by_first_appearance(theirs))
  tree = clustering.ward_tree(x)
  for k, score in result.silhouettes.items():
    labels = sk_cluster.AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(x)
    np.testing.assert_array_equal(clustering.cut(tree, k), _by_first_appearance(labels))
    assert score == pytest.approx(metrics.silhouette_score(x, labels), rel=1e-5)
  assert max(result.silhouettes, key=result.silhouettes.get) == planted
  for j in range(planted):
    np.testing.assert_allclose(result.prototypes[j], x[result.labels == j].mean(0), rtol=1e-5)
  np.testing.assert_array_equal(result.anchors, result.prototypes[:, :8])
  assert result.note == ""


def test_features_are_weighted_unit_parts():
  rng = np.random.default_rng(0)
  visual, text = rng.normal(size=(10, 6)) * 50, rng.normal(size=(10, 3)) * 0.01
  features = clustering.failure_features(visual, text, visual_weight=2.0, text_weight=0.5)
  np.testing.assert_allclose(np.linalg.norm(features[:, :6], axis=1), 2.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(features[:, 6:], axis=1), 0.5, rtol=1e-5)
  np.testing.assert_allclose(
    features[:, :6], 2 * visual / np.linalg.norm(visual, axis=1, keepdims=True), rtol=1e-5
  )
  assert clustering.failure_features(visual, text, text_weight=0).shape == (10, 6)


def test_text_embedding_groups_similar_question_answers():
  texts = ["motion ghosting severe artifact in brain MRI"] * 5 + [
    "low dose noise in chest CT scan grainy"
  ] * 5
  emb = clustering.text_embedding(texts, dim=4)
  assert emb.shape[0] == 10 and emb.shape[1] <= 4
  unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  sims = unit @ unit.T
  assert sims[:5, :5].min() > 0.99 and abs(sims[:5, 5:]).max() < 0.1


def test_joint_features_separate_by_text_when_images_agree():
  rng = np.random.default_rng(1)
  visual = rng.normal(size=(1, 16)) + rng.normal(size=(40, 16)) * 0.05  # one image look
  texts = ["what artifact: motion ghosting"] * 20 + ["how severe: mild noise"] * 20
  features = clustering.failure_features(visual, clustering.text_embedding(texts, dim=8))
  result = clustering.cluster(features, visual_dim=16, k_range=(2, 5))
  assert result.n_clusters == 2
  assert metrics.adjusted_rand_score([0] * 20 + [1] * 20, result.labels) == pytest.approx(1.0)


def test_fewer_failures_than_the_range_needs():
  x, _ = _blobs(2, n=4)
  result = clustering.cluster(x, visual_dim=4, k_range=(4, 10))
  assert result.n_clusters == 4 and result.labels.tolist() == [0, 1, 2, 3]
  assert "fewer than k_min + 1 = 5" in result.note
  np.testing.assert_array_equal(result.prototypes, x)
  clipped = clustering.cluster(x, visual_dim=4, k_range=(2, 10))
  assert "k_max 10 clipped to N - 1 = 3" in clipped.note
  assert set(clipped.silhouettes) <= {2, 3}


def test_silhouette_subsample_is_noted_and_still_finds_the_clusters():
  x, truth = _blobs(4, n=400)
  result = clustering.cluster(x, visual_dim=4, k_range=(2, 6), silhouette_samples=100)
  assert result.n_clusters == 4 and "subsample of 100 of 400" in result.note
  assert metrics.adjusted_rand_score(truth, result.labels) == pytest.approx(1.0)


@pytest.mark.parametrize(
  "call, message",
  [
    (lambda: clustering.cluster(np.zeros((0, 3)), 1), "non-empty"),
    (lambda: clustering.cluster(np.full((5, 3), np.nan), 1), "NaN"),
    (lambda: clustering.cluster(np.ones((5, 3)), 4), "visual_dim"),
    (lambda: clustering.cluster(np.ones((5, 3)), 1, k_range=(1, 3)), "k_range"),
    (lambda: clustering.failure_features(np.ones((3, 2)), np.ones((4, 2))), "same N"),
    (lambda: clustering.failure_features([[1, 1], [0, 0]], [[1], [1]]), "visual: row 1 has norm 0"),
    (lambda: clustering.failure_features([[1, np.nan]], [[1]]), "visual: row 0 is not finite"),
    (lambda: clustering.text_embedding([]), "at least one"),
    (lambda: clustering.text_embedding(["a b", None]), r"texts\[1\]: expected str"),
  ],
)
def test_bad_inputs(call, message):
  with pytest.raises(ValueError, match=message):
    call()
