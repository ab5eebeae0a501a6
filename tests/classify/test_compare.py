"""detkit's classic classifiers vs scikit-learn on the fixed digits split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import detkit.classify.compare as compare
from detkit.classify.compare import Row, compare_linear, digits_features, format_table, main_compare_linear
from detkit.lectures.knn import cross_validate_k


@pytest.fixture(scope="module")
def rows() -> dict[str, Row]:
    return {r.model: r for r in compare_linear(seed=0)}


def test_digits_split_is_the_fixed_stratified_one() -> None:
    X_train, X_test, y_train, y_test = digits_features()
    assert X_train.shape == (1347, 64) and X_test.shape == (450, 64)
    assert X_train.min() == 0.0 and X_train.max() == 1.0
    # Stratified: every digit's share of the test set is within one image of a quarter of its total.
    for digit in range(10):
        total = (y_train == digit).sum() + (y_test == digit).sum()
        assert abs((y_test == digit).sum() - total / 4) <= 1


@pytest.mark.parametrize("model", ["kNN (L2)", "softmax", "SVM"])
def test_detkit_is_within_one_point_of_sklearn(rows: dict[str, Row], model: str) -> None:
    row = rows[model]
    assert row.detkit_accuracy >= row.sklearn_accuracy - 0.01, row


def test_knn_uses_the_cross_validated_k(rows: dict[str, Row]) -> None:
    X_train, _, y_train, _ = digits_features()
    k, accuracies = cross_validate_k(X_train, y_train, compare.KNN_CANDIDATES, folds=5)
    assert f"k={k} " in rows["kNN (L2)"].note
    assert np.mean(accuracies[k]) == max(np.mean(a) for a in accuracies.values())


def test_all_models_learn(rows: dict[str, Row]) -> None:
    assert list(rows) == ["kNN (L2)", "softmax", "SVM", "logistic (OvR)"]
    for row in rows.values():
        assert row.detkit_accuracy > 0.9 and row.sklearn_accuracy > 0.9, row
        assert row.seconds > 0 and row.sklearn_seconds > 0


def test_table_and_json(rows: dict[str, Row], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    table = format_table(list(rows.values()))
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows)
    assert f"{100 * rows['softmax'].detkit_accuracy:.2f}" in lines[3]
    monkeypatch.setattr(compare, "compare_linear", lambda: list(rows.values()))
    out = tmp_path / "sub" / "compare.json"
    assert main_compare_linear(str(out)) == 0
    assert capsys.readouterr().out.strip() == table
    data = json.loads(out.read_text())
    assert [d["model"] for d in data] == list(rows)
    assert data[1]["detkit_accuracy"] == rows["softmax"].detkit_accuracy
