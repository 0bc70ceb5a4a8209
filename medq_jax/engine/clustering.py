"""Failure clustering (MedQ-Engine §2.2): failure features -> agglomerative clusters whose number
is chosen by silhouette -> prototypes (centroids) whose visual parts are the retrieval anchors.

Features: [w_vis * v / |v|, w_txt * t / |t|], v the image embedding (the pool encoder's, so the
anchors live in the pool's space), t a question-answer text embedding (TF-IDF over word 1-2-grams,
sublinear tf, reduced by TruncatedSVD; the paper does not name its text encoder). Both parts are
L2-normalised so neither dominates by scale; the default weights (1, 1) then give image and
question-answer equal say in the Euclidean distance Ward linkage uses.

Clustering: Ward agglomerative clustering, the algorithm of scikit-learn's
AgglomerativeClustering(linkage="ward") (which runs scipy's Ward linkage on scipy's pdist): we
build the tree once with scipy's `linkage` from distances computed by BLAS in row blocks (scipy's
pdist took 62 s of sklearn's 62 s fit on 10K x 576 features; BLAS takes ~2 s) and cut it at each k
in [k_min, k_max] (`fcluster`, maxclust). Clusters are numbered by first appearance. The tests
check the partitions equal sklearn's. The k with the highest silhouette wins (ties: the smaller k).
Silhouette is O(n^2): above `silhouette_samples` failures it is computed on one seeded subsample,
the same for every k, from one precomputed distance matrix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy.cluster import hierarchy
from sklearn import decomposition, metrics
from sklearn.feature_extraction import text as sk_text


@dataclasses.dataclass(frozen=True)
class Clustering:
  """`labels` [N]; `prototypes` [k, D] (centroids of the features); `anchors` [k, D_vis] (their
  visual parts); `silhouettes` {k: score}; `note` says when the range was clipped or skipped."""

  labels: np.ndarray
  n_clusters: int
  prototypes: np.ndarray
  anchors: np.ndarray
  silhouettes: dict[int, float]
  note: str


def _l2(x: np.ndarray, name: str) -> np.ndarray:
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  zero = np.flatnonzero(norms[:, 0] == 0)
  if zero.size:
    raise ValueError(f"{name}: row {zero[0]} has norm 0 (expected a non-zero embedding)")
  return x / norms


def text_embedding(texts: Sequence[str], dim: int = 64, seed: int = 0) -> np.ndarray:
  """Question + answer texts -> [N, <=dim] float32: TF-IDF (1-2-grams) reduced by TruncatedSVD.

  With fewer terms or texts than `dim`, the dimension is what the data allows (a text with no
  known term gets a zero row; `failure_features` refuses it by name).
  """
  if not len(texts):
    raise ValueError("texts: expected at least one text")
  for i, text in enumerate(texts):
    if not isinstance(text, str):
      raise ValueError(f"texts[{i}]: expected str, got {type(text).__name__}")
  tfidf = sk_text.TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit_transform(texts)
  k = min(dim, tfidf.shape[1] - 1, len(texts) - 1)
  if k < 1:
    return tfidf.toarray().astype(np.float32)
  svd = decomposition.TruncatedSVD(n_components=k, random_state=seed)
  with np.errstate(divide="ignore", invalid="ignore"):  # explained_variance_ratio_ of 0 variance
    return svd.fit_transform(tfidf).astype(np.float32)


def failure_features(
  visual, text, visual_weight: float = 1.0, text_weight: float = 1.0
) -> np.ndarray:
  """[N, D_vis] image + [N, D_txt] text embeddings -> [N, D_vis + D_txt] float32 features."""
  visual, text = np.asarray(visual, np.float32), np.asarray(text, np.float32)
  if visual.ndim != 2 or text.ndim != 2 or visual.shape[0] != text.shape[0]:
    raise ValueError(
      f"visual {visual.shape} and text {text.shape}: expected [N, D] arrays with the same N"
    )
  for name, part in (("visual", visual), ("text", text)):
    bad = np.flatnonzero(~np.isfinite(part).all(axis=1))
    if bad.size:
      raise ValueError(f"{name}: row {bad[0]} is not finite (NaN or inf)")
  if visual_weight <= 0 or text_weight < 0:
    raise ValueError(
      f"weights: expected visual_weight > 0 and text_weight >= 0, got {visual_weight}, {text_weight}"
    )
  parts = [visual_weight * _l2(visual, "visual")]
  if text_weight > 0:
    parts.append(text_weight * _l2(text, "text"))
  return np.concatenate(parts, axis=1)


def cluster(
  features,
  visual_dim: int,
  k_range: tuple[int, int] = (2, 20),
  silhouette_samples: int = 5000,
  seed: int = 0,
) -> Clustering:
  """Ward clustering of `features` [N, D] with k in k_range (inclusive) chosen by silhouette.

  `visual_dim`: how many leading feature columns are the visual part (the anchors). With fewer
  than 3 failures or fewer than k_min + 1, no silhouette is defined: every failure is its own
  prototype and `note` says so; k_max is clipped to N - 1.
  """
  features = np.asarray(features, np.float32)
  if features.ndim != 2 or features.shape[0] == 0:
    raise ValueError(f"features: expected a non-empty [N, D] array, got shape {features.shape}")
  if not 0 < visual_dim <= features.shape[1]:
    raise ValueError(f"visual_dim: expected 1..{features.shape[1]}, got {visual_dim}")
  if not np.isfinite(features).all():
    raise ValueError("features: NaN or inf values")
  k_min, k_max = int(k_range[0]), int(k_range[1])
  if not 2 <= k_min <= k_max:
    raise ValueError(f"k_range: expected 2 <= k_min <= k_max, got {k_range}")
  n = features.shape[0]
  notes = []
  if n < k_min + 1:
    labels = np.arange(n)
    note = (
      f"{n} failures, fewer than k_min + 1 = {k_min + 1} (silhouette needs 2 <= k <= N - 1): "
      "every failure is its own prototype"
    )
    return Clustering(labels, n, features.copy(), features[:, :visual_dim].copy(), {}, note)
  if k_max > n - 1:
    notes.append(f"k_max {k_max} clipped to N - 1 = {n - 1}")
    k_max = n - 1
  subset = np.arange(n)
  if n > silhouette_samples:
    subset = np.sort(np.random.default_rng(seed).choice(n, silhouette_samples, replace=False))
    notes.append(f"silhouette on a seeded subsample of {silhouette_samples} of {n} failures")
  tree = ward_tree(features)
  sub_distances = metrics.pairwise_distances(features[subset].astype(np.float64))
  silhouettes, best = {}, None
  for k in range(k_min, k_max + 1):
    labels = cut(tree, k)
    sub = labels[subset]
    if not 2 <= len(np.unique(sub)) < len(subset):
      continue
    score = float(metrics.silhouette_score(sub_distances, sub, metric="precomputed"))
    silhouettes[k] = score
    if best is None or score > best[0]:
      best = (score, k, labels)
  if best is None:
    raise ValueError(f"no k in {k_min}..{k_max} gives a defined silhouette on {n} failures")
  _, k, labels = best
  k = int(labels.max()) + 1
  prototypes = np.stack([features[labels == j].mean(axis=0) for j in range(k)])
  return Clustering(
    labels, k, prototypes, prototypes[:, :visual_dim].copy(), silhouettes, "; ".join(notes)
  )


def condensed_distances(x: np.ndarray, block: int = 1024) -> np.ndarray:
  """scipy's condensed Euclidean distance vector of [N, D] rows, by BLAS in row blocks (float64)."""
  x = np.asarray(x, np.float64)
  n = x.shape[0]
  squared = np.einsum("ij,ij->i", x, x)
  out = np.empty(n * (n - 1) // 2, np.float64)
  for start in range(0, n, block):
    stop = min(start + block, n)
    d2 = squared[start:stop, None] + squared[None, start:] - 2.0 * x[start:stop] @ x[start:].T
    d = np.sqrt(np.maximum(d2, 0.0))
    for i in range(start, stop):
      begin = n * i - i * (i + 1) // 2  # index of pair (i, i + 1)
      out[begin : begin + n - i - 1] = d[i - start, i - start + 1 :]
  return out


def ward_tree(features: np.ndarray) -> np.ndarray:
  """The scipy linkage matrix of Ward clustering of the rows."""
  return hierarchy.linkage(condensed_distances(features), method="ward")


def cut(tree: np.ndarray, k: int) -> np.ndarray:
  """The tree cut into k clusters, labels 0..k-1 numbered by first appearance."""
  raw = hierarchy.fcluster(tree, k, criterion="maxclust")
  _, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
  rank = np.argsort(np.argsort(first))
  return rank[inverse].astype(np.int64)
