"""k-nearest neighbours (CS231n lecture 2), vectorized in numpy.

Shapes: M query rows, N training rows, D features, C classes, K neighbours.

numpy, not torch: the lecture's point is the arithmetic (the distance expansion,
the vote), nothing here needs autograd or a GPU, and it keeps the tests honest by
leaving scikit-learn as an independent oracle.

Determinism, stated once:

* neighbours are ranked by distance with a *stable* sort, so equal distances are
  broken by the lower training-row index;
* the vote is a plain majority; a tie between classes goes to the **smallest
  label** (the rule of the CS231n assignment, and what scikit-learn's uniform
  vote does, because ``argmax`` returns the first maximum);
* :func:`cross_validate_k` uses contiguous folds (no shuffling, the same folds as
  ``sklearn.model_selection.KFold(n_splits=folds)``) and a tie between ``k``
  values goes to the smallest ``k``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from detkit.errors import ConfigError

Metric = Literal["l1", "l2"]

__all__ = [
    "KNearestNeighbor",
    "cross_validate_k",
    "l1_distances",
    "l2_distances",
    "majority_vote",
    "pairwise_distances",
]


def l2_distances(queries: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Euclidean distances, fully vectorized: ``(M, D), (N, D) -> (M, N)``.

    Uses ``||a - b||^2 = ||a||^2 - 2 a.b + ||b||^2``, so the only large operation
    is one matrix product (no ``(M, N, D)`` temporary).
    """
    a = np.asarray(queries, dtype=np.float64)
    b = np.asarray(train, dtype=np.float64)
    sq = (a * a).sum(1)[:, None] - 2.0 * (a @ b.T) + (b * b).sum(1)[None, :]  # (M, 1) + (M, N) + (1, N)
    # The expansion cancels catastrophically for (near-)identical rows and can come out
    # slightly negative; sqrt of that is nan. The course notes skip this clamp.
    return np.sqrt(np.maximum(sq, 0.0))


def l1_distances(queries: np.ndarray, train: np.ndarray, *, max_elements: int = 1 << 22) -> np.ndarray:
    """Manhattan distances ``(M, D), (N, D) -> (M, N)``, computed in row chunks.

    L1 has no matrix-product expansion, so each chunk builds an ``(m, N, D)``
    difference tensor; ``m`` is chosen so that tensor holds at most
    ``max_elements`` numbers (32 MiB of float64 by default), which bounds memory
    whatever M is.
    """
    a = np.asarray(queries, dtype=np.float64)
    b = np.asarray(train, dtype=np.float64)
    rows_per_chunk = max(1, max_elements // max(1, b.shape[0] * b.shape[1]))
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.float64)
    for start in range(0, a.shape[0], rows_per_chunk):
        chunk = a[start : start + rows_per_chunk]
        out[start : start + rows_per_chunk] = np.abs(chunk[:, None, :] - b[None, :, :]).sum(-1)  # (m, N, D) -> (m, N)
    return out


def pairwise_distances(queries: np.ndarray, train: np.ndarray, metric: Metric = "l2") -> np.ndarray:
    """Distances ``(M, D), (N, D) -> (M, N)`` under ``metric`` (``"l1"`` or ``"l2"``)."""
    if metric == "l2":
        return l2_distances(queries, train)
    if metric == "l1":
        return l1_distances(queries, train)
    raise ConfigError(f"unknown kNN metric {metric!r}; use 'l1' or 'l2'")


def majority_vote(neighbor_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Most frequent label per row: ``(M, K)`` ints in ``[0, C)`` -> ``(M,)``.

    Ties go to the smallest label (``argmax`` returns the first maximum).
    """
    # One-hot and sum instead of a Python loop of bincounts: (M, K) -> (M, K, C) -> (M, C).
    counts = (neighbor_labels[:, :, None] == np.arange(num_classes)[None, None, :]).sum(1)
    return counts.argmax(1)


def _check_k(k: int, num_train: int) -> None:
    if not 1 <= k <= num_train:
        raise ConfigError(f"kNN needs 1 <= k <= number of training rows ({num_train}); got k={k}")


class KNearestNeighbor:
    """k-nearest-neighbour classifier with L1 or L2 distance.

    ``fit`` only memorizes the data (O(1) training, O(N) per prediction: the
    lecture's reason kNN is never used on raw pixels at scale).

    Args:
        k: number of neighbours that vote.
        metric: ``"l1"`` or ``"l2"``.
    """

    def __init__(self, *, k: int = 1, metric: Metric = "l2") -> None:
        if metric not in ("l1", "l2"):
            raise ConfigError(f"unknown kNN metric {metric!r}; use 'l1' or 'l2'")
        self.k = k
        self.metric: Metric = metric
        self.X_train = np.empty((0, 0))
        self.y_train = np.empty((0,), dtype=np.int64)  # encoded labels in [0, C)
        self.classes_ = np.empty((0,))

    def fit(self, X: np.ndarray, y: np.ndarray) -> KNearestNeighbor:
        """Memorize ``X (N, D)`` and labels ``y (N,)`` (any sortable label values)."""
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ValueError(f"fit expects X (N, D) and y (N,); got {X.shape} and {y.shape}")
        self.classes_, self.y_train = np.unique(y, return_inverse=True)
        self.X_train = X
        return self

    def kneighbors(self, X: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Distances and training indices of the ``k`` nearest rows: ``(M, D) -> (M, K), (M, K)``."""
        k = self.k if k is None else k
        _check_k(k, self.X_train.shape[0])
        dists = pairwise_distances(X, self.X_train, self.metric)  # (M, N)
        # A stable full sort rather than argpartition: argpartition breaks distance ties
        # arbitrarily, which would make predictions depend on the numpy version.
        order = np.argsort(dists, axis=1, kind="stable")[:, :k]  # (M, K)
        return np.take_along_axis(dists, order, axis=1), order

    def predict(self, X: np.ndarray, k: int | None = None) -> np.ndarray:
        """Predicted labels ``(M, D) -> (M,)`` (in the label values given to ``fit``)."""
        _, idx = self.kneighbors(X, k)
        return self.classes_[majority_vote(self.y_train[idx], len(self.classes_))]

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        """Accuracy on ``X (M, D)``, ``y (M,)``."""
        return float((self.predict(X) == np.asarray(y)).mean())


def cross_validate_k(
    X: np.ndarray, y: np.ndarray, ks: Sequence[int], folds: int = 5, *, metric: Metric = "l2"
) -> tuple[int, dict[int, np.ndarray]]:
    """Pick ``k`` by ``folds``-fold cross-validation.

    Args:
        X: ``(N, D)`` training features.
        y: ``(N,)`` labels.
        ks: candidate ``k`` values.
        folds: number of contiguous folds (``np.array_split`` sizes, as ``KFold``).
        metric: ``"l1"`` or ``"l2"``.

    Returns:
        ``(best_k, accuracies)`` where ``accuracies[k]`` is a ``(folds,)`` array of
        validation accuracies; ``best_k`` has the highest mean (smallest ``k`` on a tie).
    """
    X = np.asarray(X, dtype=np.float64)
    classes, y_enc = np.unique(np.asarray(y), return_inverse=True)
    n = X.shape[0]
    if not 2 <= folds <= n:
        raise ConfigError(f"cross-validation needs 2 <= folds <= number of rows ({n}); got folds={folds}")
    if len(ks) == 0:
        raise ConfigError("cross_validate_k needs at least one candidate k")
    fold_idx = np.array_split(np.arange(n), folds)
    _check_k(max(ks), n - max(len(f) for f in fold_idx))
    # All folds' distances are sub-blocks of one (N, N) matrix: compute it once, and for
    # each fold sort once and read every candidate k off the same ranking.
    dists = pairwise_distances(X, X, metric)
    accuracies = {k: np.empty(folds) for k in ks}
    for f, val in enumerate(fold_idx):
        train = np.setdiff1d(np.arange(n), val)  # sorted, so stable ties still prefer lower row index
        order = np.argsort(dists[np.ix_(val, train)], axis=1, kind="stable")  # (V, T)
        ranked_labels = y_enc[train][order]  # (V, T) labels of neighbours, nearest first
        for k in ks:
            pred = majority_vote(ranked_labels[:, :k], len(classes))
            accuracies[k][f] = (pred == y_enc[val]).mean()
    means = [accuracies[k].mean() for k in ks]
    best = max(means)
    best_k = min(k for k, m in zip(ks, means) if m == best)
    return best_k, accuracies
