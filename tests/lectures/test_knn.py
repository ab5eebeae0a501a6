"""kNN against scikit-learn (brute force, same metric) and a slow cross-validation loop."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import pairwise_distances as sk_pairwise_distances
from sklearn.model_selection import KFold
from sklearn.neighbors import KNeighborsClassifier

from detkit.errors import ConfigError
from detkit.lectures.knn import KNearestNeighbor, cross_validate_k, l1_distances, l2_distances, majority_vote


def _blobs(n: int, d: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian blobs: continuous features (no distance ties), labels not 0..C-1."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, d))
    y = rng.integers(0, classes, size=n)
    X = centers[y] + 0.9 * rng.normal(size=(n, d))
    return X, 10 * y + 3


def test_l2_distances_match_sklearn_and_survive_cancellation() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 5)) * 100, rng.normal(size=(9, 5)) * 100
    np.testing.assert_allclose(l2_distances(a, b), sk_pairwise_distances(a, b, metric="euclidean"), rtol=1e-10)
    # Identical rows: the expansion may cancel to a tiny negative; the clamp keeps sqrt finite.
    same = l2_distances(a, a)
    assert np.isfinite(same).all()
    np.testing.assert_allclose(np.diag(same), 0.0, atol=1e-4)


@pytest.mark.parametrize("max_elements", [1, 50, 1 << 22])
def test_l1_distances_match_sklearn_for_any_chunking(max_elements: int) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(11, 4)), rng.normal(size=(6, 4))
    np.testing.assert_allclose(
        l1_distances(a, b, max_elements=max_elements), sk_pairwise_distances(a, b, metric="manhattan"), rtol=1e-12
    )


@pytest.mark.parametrize("metric, sk_metric", [("l2", "euclidean"), ("l1", "manhattan")])
@pytest.mark.parametrize("k", [1, 3, 4, 7])
def test_predictions_match_sklearn_brute(metric: str, sk_metric: str, k: int) -> None:
    X, y = _blobs(160, 6, 4, seed=k)
    X_train, y_train, X_test = X[:120], y[:120], X[120:]
    ours = KNearestNeighbor(k=k, metric=metric).fit(X_train, y_train).predict(X_test)  # type: ignore[arg-type]
    ref = KNeighborsClassifier(n_neighbors=k, algorithm="brute", metric=sk_metric).fit(X_train, y_train)
    np.testing.assert_array_equal(ours, ref.predict(X_test))
    np.testing.assert_array_equal(
        KNearestNeighbor(k=k, metric=metric).fit(X_train, y_train).kneighbors(X_test)[1],  # type: ignore[arg-type]
        ref.kneighbors(X_test, return_distance=False),
    )


def test_vote_tie_goes_to_smallest_label_not_nearest() -> None:
    # 1-D: label 7 at 0.0, label 2 at 1.0; the query 0.4 is nearer the 7, but k=2 ties 1-1.
    model = KNearestNeighbor(k=2).fit(np.array([[0.0], [1.0]]), np.array([7, 2]))
    assert model.predict(np.array([[0.4]]))[0] == 2
    assert model.predict(np.array([[0.4]]), k=1)[0] == 7
    # Counts (2 of label 1, 2 of label 0, 1 of label 2) -> tie between 0 and 1 -> 0.
    assert majority_vote(np.array([[1, 1, 0, 2, 0]]), 3).tolist() == [0]


def test_distance_tie_goes_to_lower_training_index() -> None:
    # The query 0 is equidistant from -1 (row 0, label 5) and +1 (row 1, label 3).
    model = KNearestNeighbor(k=1, metric="l1").fit(np.array([[-1.0], [1.0]]), np.array([5, 3]))
    assert model.predict(np.array([[0.0]]))[0] == 5
    model = KNearestNeighbor(k=1, metric="l1").fit(np.array([[1.0], [-1.0]]), np.array([3, 5]))
    assert model.predict(np.array([[0.0]]))[0] == 3


def test_cross_validation_matches_a_slow_loop() -> None:
    X, y = _blobs(103, 4, 3, seed=5)  # 103 rows: unequal folds (21, 21, 21, 20, 20)
    ks = [1, 2, 3, 5, 8, 13]
    best_k, accuracies = cross_validate_k(X, y, ks, folds=5)
    slow = {k: [] for k in ks}
    for train, val in KFold(n_splits=5).split(X):
        for k in ks:
            model = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(X[train], y[train])
            slow[k].append(model.score(X[val], y[val]))
    for k in ks:
        np.testing.assert_allclose(accuracies[k], slow[k], rtol=0, atol=1e-12)
    means = np.array([np.mean(slow[k]) for k in ks])
    assert best_k == ks[int(np.flatnonzero(means == means.max())[0])]


def test_cross_validation_tie_goes_to_smallest_k() -> None:
    # Two far-apart tight clusters: every k up to 3 classifies every fold perfectly.
    rng = np.random.default_rng(6)
    y = np.tile([0, 1], 10)  # interleaved: contiguous folds hold both classes
    X = 100.0 * y[:, None] + rng.normal(size=(20, 2))
    best_k, accuracies = cross_validate_k(X, y, [3, 2, 1], folds=2)
    assert all((a == 1.0).all() for a in accuracies.values())
    assert best_k == 1


def test_bad_hyperparameters_are_config_errors() -> None:
    X, y = _blobs(10, 2, 2, seed=0)
    with pytest.raises(ConfigError, match="k=11"):
        KNearestNeighbor(k=11).fit(X, y).predict(X)
    with pytest.raises(ConfigError, match="metric"):
        KNearestNeighbor(metric="cosine")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="k=9"):
        cross_validate_k(X, y, [1, 9], folds=5)  # training folds hold only 8 rows
