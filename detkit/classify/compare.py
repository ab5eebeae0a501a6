"""detkit's classic classifiers next to scikit-learn's, on the bundled 8x8 digits.

The data is ``sklearn.datasets.load_digits`` (1797 images, shipped with
scikit-learn, no download) as 64 features scaled to ``[0, 1]`` (pixel / 16),
split once and for all with ``train_test_split(test_size=0.25, stratify=y,
random_state=0)``: 1347 training and 450 test rows, so one test image is 0.22
points of accuracy.

Pairs compared (each detkit model uses its default hyperparameters):

* kNN, L2, ``k`` by 5-fold cross-validation on the training rows, vs
  ``KNeighborsClassifier`` (brute force) with the same ``k``;
* softmax vs ``LogisticRegression`` (multinomial, ``C=1``);
* multiclass SVM (Weston-Watkins hinge) vs ``LinearSVC`` (one-vs-rest squared
  hinge, ``C=1``): the same family, not the same loss;
* one-vs-rest logistic regression vs ``OneVsRestClassifier(LogisticRegression)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from detkit.classify.data import DIGITS_SPLIT_SEED, DIGITS_TEST_SIZE
from detkit.io import write_json
from detkit.lectures.knn import KNearestNeighbor, cross_validate_k
from detkit.lectures.linear import LinearClassifier

__all__ = ["KNN_CANDIDATES", "Row", "compare_linear", "digits_features", "format_table", "main_compare_linear"]

#: Candidate ``k`` values for the kNN cross-validation.
KNN_CANDIDATES = tuple(range(1, 11))


@dataclass(frozen=True)
class Row:
    """One model on the digits test split.

    Attributes:
        model: model name.
        detkit_accuracy: detkit's test accuracy in ``[0, 1]``.
        sklearn_accuracy: scikit-learn's counterpart's test accuracy.
        seconds: detkit's fit + predict wall time.
        sklearn_seconds: scikit-learn's fit + predict wall time.
        note: the scikit-learn counterpart and settings.
    """

    model: str
    detkit_accuracy: float
    sklearn_accuracy: float
    seconds: float
    sklearn_seconds: float
    note: str


def digits_features() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed digits split as float64 features in ``[0, 1]``.

    Returns:
        ``X_train (1347, 64), X_test (450, 64), y_train (1347,), y_test (450,)``.
    """
    X, y = load_digits(return_X_y=True)
    X = np.asarray(X, dtype=np.float64) / 16.0  # pixels are integers 0..16
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=DIGITS_TEST_SIZE, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    return X_train, X_test, y_train, y_test


def _timed_accuracy(fit_predict: Callable[[], np.ndarray], y_test: np.ndarray) -> tuple[float, float]:
    start = time.perf_counter()
    pred = fit_predict()
    return float((pred == y_test).mean()), time.perf_counter() - start


def compare_linear(*, seed: int = 0) -> list[Row]:
    """Run the four detkit/scikit-learn pairs on the fixed digits split.

    Args:
        seed: seeds detkit's SGD (initialization and shuffling) and ``LinearSVC``;
            the data split is fixed and does not depend on it.

    Returns:
        One :class:`Row` per model: kNN, softmax, SVM, logistic (one-vs-rest).
    """
    # One BLAS/OpenMP thread for both sides: on problems this small, extra threads only add
    # synchronization (and oversubscribe a shared machine: lbfgs one-vs-rest ran 30x slower),
    # and the same limit on both sides keeps the timings comparable.
    with threadpool_limits(limits=1):
        return _compare_linear(seed)


def _compare_linear(seed: int) -> list[Row]:
    X_train, X_test, y_train, y_test = digits_features()
    rows: list[Row] = []

    def add(name: str, ours: Callable[[], np.ndarray], theirs: Callable[[], np.ndarray], note: str) -> None:
        acc, sec = _timed_accuracy(ours, y_test)
        sk_acc, sk_sec = _timed_accuracy(theirs, y_test)
        rows.append(Row(name, acc, sk_acc, sec, sk_sec, note))

    k, _ = cross_validate_k(X_train, y_train, KNN_CANDIDATES, folds=5)
    add(
        "kNN (L2)",
        lambda: KNearestNeighbor(k=k, metric="l2").fit(X_train, y_train).predict(X_test),
        lambda: KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(X_train, y_train).predict(X_test),
        f"k={k} by 5-fold CV; KNeighborsClassifier(brute)",
    )
    add(
        "softmax",
        lambda: LinearClassifier(loss="softmax", seed=seed).fit(X_train, y_train).predict(X_test),
        lambda: LogisticRegression(max_iter=2000).fit(X_train, y_train).predict(X_test),
        "LogisticRegression (multinomial, C=1)",
    )
    add(
        "SVM",
        lambda: LinearClassifier(loss="svm", seed=seed).fit(X_train, y_train).predict(X_test),
        lambda: LinearSVC(max_iter=10000, random_state=seed).fit(X_train, y_train).predict(X_test),
        "LinearSVC (one-vs-rest squared hinge, C=1)",
    )
    add(
        "logistic (OvR)",
        lambda: LinearClassifier(loss="logistic", seed=seed).fit(X_train, y_train).predict(X_test),
        lambda: OneVsRestClassifier(LogisticRegression(max_iter=2000)).fit(X_train, y_train).predict(X_test),
        "OneVsRestClassifier(LogisticRegression, C=1)",
    )
    return rows


def format_table(rows: list[Row]) -> str:
    """A fixed-width text table of ``rows`` (accuracies in percent)."""
    header = ("model", "detkit %", "sklearn %", "detkit s", "sklearn s", "sklearn model / note")
    body = [
        (
            r.model,
            f"{100 * r.detkit_accuracy:.2f}",
            f"{100 * r.sklearn_accuracy:.2f}",
            f"{r.seconds:.3f}",
            f"{r.sklearn_seconds:.3f}",
            r.note,
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: tuple[str, ...]) -> str:
        # Text columns left-aligned, numbers right-aligned.
        cells = [c.ljust(w) if i in (0, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(line) for line in body)])


def main_compare_linear(out_json: str | None = None) -> int:
    """Print the comparison table; with ``out_json``, also write the rows there as JSON. Returns 0."""
    rows = compare_linear()
    print(format_table(rows))
    if out_json is not None:
        write_json(out_json, [asdict(r) for r in rows])
    return 0
