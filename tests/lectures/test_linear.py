"""Linear-classifier losses against torch, hand-computed values and numeric gradients; training vs sklearn."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from detkit.errors import ConfigError
from detkit.lectures.linear import (
    LinearClassifier,
    linear_loss,
    logistic_loss,
    scratch_log_softmax,
    scratch_sigmoid,
    scratch_softmax,
    softmax_loss,
    svm_loss,
    weight_penalty,
)


def numeric_gradient(f: Callable[[], float], x: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """Centered differences ``(f(x + h) - f(x - h)) / 2h``, one entry at a time (x is modified in place)."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        plus = f()
        x[idx] = old - h
        minus = f()
        x[idx] = old
        grad[idx] = (plus - minus) / (2 * h)
    return grad


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


def _problem(seed: int, n: int = 8, d: int = 5, c: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(d, c)), rng.normal(size=c), rng.normal(size=(n, d)), rng.integers(0, c, size=n)


def test_svm_loss_lecture_example() -> None:
    # CS231n notes: cat, car and frog images scored by a 3-class classifier; losses 2.9, 0, 12.9.
    scores = np.array([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1]])
    loss, _ = svm_loss(scores, np.array([0, 1, 2]))
    assert loss == pytest.approx((2.9 + 0.0 + 12.9) / 3)


def test_svm_loss_matches_torch_multi_margin() -> None:
    rng = np.random.default_rng(0)
    scores, y = rng.normal(size=(10, 6)), rng.integers(0, 6, size=10)
    loss, dscores = svm_loss(scores, y)
    s = torch.tensor(scores, requires_grad=True)
    # torch divides each example's hinge sum by the number of classes: undo that.
    ref = F.multi_margin_loss(s, torch.tensor(y), p=1, margin=1.0) * scores.shape[1]
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(dscores, s.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_softmax_loss_matches_torch_cross_entropy() -> None:
    rng = np.random.default_rng(1)
    scores, y = 3 * rng.normal(size=(9, 5)), rng.integers(0, 5, size=9)
    loss, dscores = softmax_loss(scores, y)
    s = torch.tensor(scores, requires_grad=True)
    ref = F.cross_entropy(s, torch.tensor(y))
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(dscores, s.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_softmax_is_stable_for_huge_scores() -> None:
    # Unshifted, exp(1000) = inf and the probabilities become nan.
    scores = np.array([[1000.0, 999.0, -1000.0], [-5e4, 0.0, 5e4]])
    y = np.array([2, 0])
    with np.errstate(over="raise", divide="raise", invalid="raise"):  # harmless underflow allowed
        probs = scratch_softmax(scores)
        loss, dscores = softmax_loss(scores, y)
    ref = F.cross_entropy(torch.tensor(scores), torch.tensor(y))
    assert np.isfinite(probs).all() and np.isfinite(dscores).all()
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    expected = F.log_softmax(torch.tensor(scores), dim=1).numpy()
    np.testing.assert_allclose(scratch_log_softmax(scores), expected, rtol=1e-12)


@pytest.mark.parametrize("shape", [(12,), (7, 3)])
def test_logistic_loss_matches_torch_bce_with_logits(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(2)
    scores = 4 * rng.normal(size=shape)
    scores.flat[0] = 800.0  # sigma = 1 exactly in float64: log(1 - sigma) would be -inf
    targets = rng.integers(0, 2, size=shape).astype(np.float64)
    targets.flat[0] = 0.0
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        loss, dscores = logistic_loss(scores, targets)
    s = torch.tensor(scores, requires_grad=True)
    ref = F.binary_cross_entropy_with_logits(s, torch.tensor(targets), reduction="sum") / shape[0]
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(dscores, s.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_sigmoid_matches_torch_without_overflow() -> None:
    x = np.array([-1000.0, -30.0, -1.0, 0.0, 2.5, 40.0, 1000.0])
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        np.testing.assert_allclose(scratch_sigmoid(x), torch.sigmoid(torch.tensor(x)).numpy(), rtol=1e-14, atol=0)


@pytest.mark.parametrize("reg_type", ["l2", "l1", "elastic"])
def test_weight_penalty_values_and_numeric_gradient(reg_type: str) -> None:
    rng = np.random.default_rng(3)
    W = rng.normal(size=(4, 3))
    W += 0.1 * np.sign(W)  # keep every weight away from the L1 kink at 0
    loss, dW = weight_penalty(W, 0.3, reg_type, l1_ratio=0.25)  # type: ignore[arg-type]
    l1, l2 = np.abs(W).sum(), (W**2).sum()
    expected = {"l2": 0.3 * l2, "l1": 0.3 * l1, "elastic": 0.3 * (0.25 * l1 + 0.75 * l2)}[reg_type]
    assert loss == pytest.approx(expected, rel=1e-14)
    num = numeric_gradient(lambda: weight_penalty(W, 0.3, reg_type, 0.25)[0], W)  # type: ignore[arg-type]
    assert rel_error(dW, num) < 1e-7


@pytest.mark.parametrize("loss", ["svm", "softmax", "logistic"])
@pytest.mark.parametrize("reg_type", ["l2", "l1", "elastic"])
def test_linear_loss_gradient_matches_numeric(loss: str, reg_type: str) -> None:
    W, b, X, y = _problem(seed=4)
    W += 0.1 * np.sign(W)

    def f() -> float:
        return linear_loss(W, b, X, y, loss=loss, reg=0.1, reg_type=reg_type)[0]  # type: ignore[arg-type]

    _, dW, db = linear_loss(W, b, X, y, loss=loss, reg=0.1, reg_type=reg_type)  # type: ignore[arg-type]
    # Piecewise-linear SVM: make sure no margin sits within h of its kink, where differences lie.
    scores = X @ W + b
    margins = scores - scores[np.arange(len(y)), y][:, None] + 1.0
    assert np.abs(margins).min() > 1e-3
    assert rel_error(dW, numeric_gradient(f, W)) < 1e-7
    assert rel_error(db, numeric_gradient(f, b)) < 1e-7


def test_binary_logistic_gradient_single_column() -> None:
    rng = np.random.default_rng(5)
    W, b, X, y = rng.normal(size=(3, 1)), rng.normal(size=1), rng.normal(size=(10, 3)), rng.integers(0, 2, size=10)
    _, dW, db = linear_loss(W, b, X, y, loss="logistic", reg=0.05)
    f = lambda: linear_loss(W, b, X, y, loss="logistic", reg=0.05)[0]  # noqa: E731
    assert rel_error(dW, numeric_gradient(f, W)) < 1e-7
    assert rel_error(db, numeric_gradient(f, b)) < 1e-7


def _gd(loss: str, reg: float) -> LinearClassifier:
    # Full-batch, constant step: plain gradient descent, which converges on these convex problems.
    return LinearClassifier(loss=loss, reg=reg, batch_size=10_000, epochs=3000, learning_rate=1.0, lr_decay=1.0)  # type: ignore[arg-type]


def test_softmax_training_reaches_sklearn_multinomial_solution() -> None:
    rng = np.random.default_rng(6)
    X, y = rng.normal(size=(150, 4)), rng.integers(0, 3, size=150)
    X[np.arange(150), y] += 1.5  # some signal
    C = 0.5
    # sklearn minimizes 0.5 ||W||^2 + C sum_i L_i; detkit minimizes mean_i L_i + reg ||W||^2.
    ours = _gd("softmax", reg=1.0 / (2 * C * len(y))).fit(X, y)
    ref = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose(ours.W.T, ref.coef_, atol=1e-5)
    np.testing.assert_allclose(ours.b, ref.intercept_, atol=1e-5)


def test_binary_logistic_training_reaches_sklearn_solution() -> None:
    rng = np.random.default_rng(7)
    X, labels = rng.normal(size=(120, 3)), rng.integers(0, 2, size=120)
    X[:, 0] += 2.0 * labels
    y = np.where(labels == 1, "yes", "no")  # labels need not be integers
    C = 0.3
    ours = _gd("logistic", reg=1.0 / (2 * C * len(y))).fit(X, y)
    ref = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(X, y)
    assert ours.W.shape == (3, 1)  # one score column for two classes
    np.testing.assert_allclose(ours.W[:, 0], ref.coef_[0], atol=1e-5)
    np.testing.assert_allclose(ours.b, ref.intercept_, atol=1e-5)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))


def test_svm_separates_separable_data() -> None:
    # With a tiny penalty, separable data admits zero hinge loss: training must drive the SVM there.
    rng = np.random.default_rng(8)
    y = rng.integers(0, 3, size=90)
    X = 0.3 * rng.normal(size=(90, 2)) + np.array([[0.0, 3.0], [3.0, 0.0], [-3.0, -3.0]])[y]
    model = LinearClassifier(loss="svm", reg=1e-6, epochs=50).fit(X, y + 100)
    assert model.score(X, y + 100) == 1.0
    scores = model.decision_function(X)
    assert svm_loss(scores, y)[0] < 1e-3
    assert model.loss_history[-1] < model.loss_history[0]


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="hinge"):
        LinearClassifier(loss="hinge")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="l3"):
        LinearClassifier(reg_type="l3")  # type: ignore[arg-type]
