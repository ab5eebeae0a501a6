"""Linear classifiers (CS231n lecture 3): SVM, softmax and logistic losses, regularization, SGD.

Shapes: N examples, D features, C classes (score columns).

numpy, not torch: every gradient here is derived and written by hand (the point
of the lecture), float64 is the default, and torch stays an independent oracle
for the tests.

Each data loss takes scores and returns ``(loss, dscores)``; :func:`linear_loss`
chains that through ``scores = X @ W + b`` (``dW = X.T @ dscores``,
``db = dscores.sum(0)``) and adds the regularization term.

Where the course material slips, this module follows the math:

* with the "bias trick" (bias folded into ``W`` as an extra row, as in the
  assignment) the penalty ``reg * sum(W**2)`` regularizes the bias too, which
  the notes themselves say is not done. Here ``b`` is separate and never
  regularized.
* the L2 penalty is ``reg * sum(W**2)`` with gradient ``2 * reg * W``. Older
  versions of the assignment used ``0.5 * reg * sum(W**2)`` with gradient
  ``reg * W``; mixing the two conventions (a common slip) gives a gradient off
  by a factor of 2 that a numeric gradient check catches.
* the assignment's SGD samples minibatches with replacement; here each epoch is
  a shuffled pass over the data, so every example is seen once per epoch.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from detkit.errors import ConfigError

LossName = Literal["svm", "softmax", "logistic"]
RegType = Literal["l2", "l1", "elastic"]

__all__ = [
    "LinearClassifier",
    "linear_loss",
    "logistic_loss",
    "scratch_log_softmax",
    "scratch_sigmoid",
    "scratch_softmax",
    "scratch_softplus",
    "softmax_loss",
    "svm_loss",
    "weight_penalty",
]


def scratch_softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax over the last axis: ``(..., C) -> (..., C)``, numerically stable.

    Softmax is shift-invariant (``softmax(s - c) == softmax(s)`` for any per-row
    constant ``c``). Subtracting the row maximum makes every exponent ``<= 0``, so
    ``exp`` cannot overflow (``exp(1000) = inf`` and ``inf / inf = nan``), and the
    largest term is ``exp(0) = 1``, so the denominator is at least 1 and never
    underflows to 0.
    """
    shifted = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def scratch_log_softmax(scores: np.ndarray) -> np.ndarray:
    """``log(softmax(scores))`` over the last axis, computed without forming tiny probabilities.

    ``np.log(softmax(s))`` gives ``-inf`` once a probability underflows to 0;
    ``(s - max) - log(sum(exp(s - max)))`` stays finite.
    """
    shifted = scores - scores.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def scratch_sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function ``1 / (1 + exp(-x))``, elementwise, without overflow.

    ``exp(-x)`` overflows for very negative ``x``; writing both branches with
    ``e = exp(-|x|) <= 1`` avoids it: ``sigma(x) = 1/(1+e)`` for ``x >= 0`` and
    ``e/(1+e)`` for ``x < 0``.
    """
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def scratch_softplus(x: np.ndarray) -> np.ndarray:
    """``log(1 + exp(x))`` elementwise, stable: ``max(x, 0) + log1p(exp(-|x|))``."""
    x = np.asarray(x, dtype=np.float64)
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def svm_loss(scores: np.ndarray, y: np.ndarray, delta: float = 1.0) -> tuple[float, np.ndarray]:
    """Multiclass SVM (Weston-Watkins hinge) loss, mean over examples.

    ``L_i = sum_{j != y_i} max(0, s_j - s_{y_i} + delta)``.

    Args:
        scores: ``(N, C)`` class scores.
        y: ``(N,)`` int labels in ``[0, C)``.
        delta: the margin (1.0 in the lecture; with L2 regularization its scale is arbitrary).

    Returns:
        ``(loss, dscores)`` with ``dscores`` of shape ``(N, C)``; at a kink
        (margin exactly 0) the subgradient 0 is used.
    """
    n = scores.shape[0]
    rows = np.arange(n)
    correct = scores[rows, y][:, None]  # (N, 1)
    margins = np.maximum(0.0, scores - correct + delta)  # (N, C)
    # The correct class is not its own competitor: without this every row adds delta.
    margins[rows, y] = 0.0
    loss = float(margins.sum() / n)
    # Each violated margin pushes its class score up by 1 and the correct score down by 1.
    dscores = (margins > 0).astype(np.float64)
    dscores[rows, y] = -dscores.sum(axis=1)
    return loss, dscores / n


def softmax_loss(scores: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Softmax cross-entropy loss, mean over examples: ``(N, C), (N,) -> (loss, (N, C))``.

    ``L_i = -log softmax(s)_{y_i}``; ``dL/ds = (softmax(s) - onehot(y)) / N``.
    """
    n = scores.shape[0]
    rows = np.arange(n)
    loss = float(-scratch_log_softmax(scores)[rows, y].mean())
    dscores = scratch_softmax(scores)
    dscores[rows, y] -= 1.0
    return loss, dscores / n


def logistic_loss(scores: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Binary logistic (sigmoid + binary cross-entropy) loss.

    Args:
        scores: ``(N,)`` logits, or ``(N, C)`` for C independent one-vs-rest problems.
        targets: same shape as ``scores``, values in ``{0, 1}`` (or probabilities).

    Returns:
        ``(loss, dscores)``: loss summed over columns and averaged over the N rows
        (so ``(N,)`` input gives the usual mean BCE), ``dscores = (sigmoid(s) - t) / N``.

    ``-[t log sigma(s) + (1 - t) log(1 - sigma(s))]`` simplifies to
    ``softplus(s) - t * s``, which never takes the log of an underflowed 0.
    """
    n = scores.shape[0]
    t = np.asarray(targets, dtype=np.float64)
    loss = float((scratch_softplus(scores) - t * scores).sum() / n)
    return loss, (scratch_sigmoid(scores) - t) / n


def weight_penalty(
    W: np.ndarray, reg: float, reg_type: RegType = "l2", l1_ratio: float = 0.5
) -> tuple[float, np.ndarray]:
    """Weight penalty ``reg * R(W)`` and its gradient (same shape as ``W``).

    * ``"l2"``: ``R = sum(W**2)``, gradient ``2 W``.
    * ``"l1"``: ``R = sum(|W|)``, subgradient ``sign(W)`` (0 at 0).
    * ``"elastic"``: ``R = l1_ratio * sum(|W|) + (1 - l1_ratio) * sum(W**2)``.
    """
    if reg_type == "l2":
        return float(reg * (W * W).sum()), 2.0 * reg * W
    if reg_type == "l1":
        return float(reg * np.abs(W).sum()), reg * np.sign(W)
    if reg_type == "elastic":
        a = l1_ratio
        loss = reg * (a * np.abs(W).sum() + (1.0 - a) * (W * W).sum())
        return float(loss), reg * (a * np.sign(W) + 2.0 * (1.0 - a) * W)
    raise ConfigError(f"unknown reg_type {reg_type!r}; use 'l2', 'l1' or 'elastic'")


def linear_loss(
    W: np.ndarray,
    b: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    *,
    loss: LossName = "softmax",
    reg: float = 0.0,
    reg_type: RegType = "l2",
    l1_ratio: float = 0.5,
    delta: float = 1.0,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Total loss of the linear classifier ``scores = X @ W + b`` and its gradients.

    Args:
        W: ``(D, C)`` weights.
        b: ``(C,)`` biases (not regularized).
        X: ``(N, D)`` features.
        y: ``(N,)`` int labels in ``[0, C)``. For ``loss="logistic"`` with ``C == 1``
            the single column is a binary classifier and ``y`` holds 0/1; with
            ``C > 1`` the columns are one-vs-rest classifiers of class ``c``.
        loss: ``"svm"``, ``"softmax"`` or ``"logistic"``.
        reg, reg_type, l1_ratio: see :func:`weight_penalty`.
        delta: the SVM margin.

    Returns:
        ``(loss, dW (D, C), db (C,))``.
    """
    scores = X @ W + b  # (N, D) @ (D, C) -> (N, C)
    if loss == "svm":
        data_loss, dscores = svm_loss(scores, y, delta)
    elif loss == "softmax":
        data_loss, dscores = softmax_loss(scores, y)
    elif loss == "logistic":
        if W.shape[1] == 1:
            targets = np.asarray(y, dtype=np.float64)[:, None]  # (N,) -> (N, 1)
        else:
            targets = (np.asarray(y)[:, None] == np.arange(W.shape[1])[None, :]).astype(np.float64)  # one-hot
        data_loss, dscores = logistic_loss(scores, targets)
    else:
        raise ConfigError(f"unknown linear loss {loss!r}; use 'svm', 'softmax' or 'logistic'")
    reg_loss, dW_reg = weight_penalty(W, reg, reg_type, l1_ratio)
    dW = X.T @ dscores + dW_reg  # (D, N) @ (N, C) -> (D, C)
    return data_loss + reg_loss, dW, dscores.sum(axis=0)


class LinearClassifier:
    """Linear classifier ``scores = X @ W + b`` trained by minibatch SGD.

    Args:
        loss: ``"svm"`` (multiclass hinge), ``"softmax"`` (cross-entropy) or
            ``"logistic"`` (one binary sigmoid classifier for two classes,
            one-vs-rest for more).
        reg: regularization strength.
        reg_type: ``"l2"``, ``"l1"`` or ``"elastic"``.
        l1_ratio: the L1 share of the elastic-net penalty.
        learning_rate: initial SGD step size.
        lr_decay: the step size is multiplied by this after every epoch.
        batch_size: minibatch size.
        epochs: passes over the training set.
        delta: SVM margin.
        init_std: standard deviation of the Gaussian initial weights.
        seed: seeds initialization and shuffling.

    After ``fit``: ``W (D, C)``, ``b (C,)``, ``classes_ (K,)``, ``loss_history``
    (one mean loss per epoch).

    The defaults are tuned for features in ``[0, 1]`` (the digits comparison in
    :mod:`detkit.classify.compare`); the large step suits them because the loss
    is a mean over the batch. Rescale features, or lower ``learning_rate``, for
    other data.
    """

    def __init__(
        self,
        *,
        loss: LossName = "softmax",
        reg: float = 1e-4,
        reg_type: RegType = "l2",
        l1_ratio: float = 0.5,
        learning_rate: float = 2.0,
        lr_decay: float = 0.97,
        batch_size: int = 64,
        epochs: int = 100,
        delta: float = 1.0,
        init_std: float = 1e-3,
        seed: int = 0,
    ) -> None:
        if loss not in ("svm", "softmax", "logistic"):
            raise ConfigError(f"unknown linear loss {loss!r}; use 'svm', 'softmax' or 'logistic'")
        if reg_type not in ("l2", "l1", "elastic"):
            raise ConfigError(f"unknown reg_type {reg_type!r}; use 'l2', 'l1' or 'elastic'")
        if batch_size < 1 or epochs < 1:
            raise ConfigError(f"batch_size and epochs must be >= 1; got {batch_size} and {epochs}")
        self.loss: LossName = loss
        self.reg = reg
        self.reg_type: RegType = reg_type
        self.l1_ratio = l1_ratio
        self.learning_rate = learning_rate
        self.lr_decay = lr_decay
        self.batch_size = batch_size
        self.epochs = epochs
        self.delta = delta
        self.init_std = init_std
        self.seed = seed
        self.W = np.empty((0, 0))
        self.b = np.empty((0,))
        self.classes_ = np.empty((0,))
        self.loss_history: list[float] = []

    def fit(self, X: np.ndarray, y: np.ndarray) -> LinearClassifier:
        """Train on ``X (N, D)``, ``y (N,)`` (any sortable label values); returns ``self``."""
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ValueError(f"fit expects X (N, D) and y (N,); got {X.shape} and {y.shape}")
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError("fit needs at least two classes")
        n, d = X.shape
        # A binary logistic regression needs one score column, not two.
        c = 1 if self.loss == "logistic" and len(self.classes_) == 2 else len(self.classes_)
        rng = np.random.default_rng(self.seed)
        # Small Gaussian weights (not zeros, so the SVM's margins start asymmetric; not large,
        # so the initial scores are ~0 and the loss starts near its chance value).
        self.W = self.init_std * rng.standard_normal((d, c))
        self.b = np.zeros(c)
        lr = self.learning_rate
        self.loss_history = []
        for _ in range(self.epochs):
            order = rng.permutation(n)
            total = 0.0
            for start in range(0, n, self.batch_size):
                batch = order[start : start + self.batch_size]
                value, dW, db = linear_loss(
                    self.W,
                    self.b,
                    X[batch],
                    y_enc[batch],
                    loss=self.loss,
                    reg=self.reg,
                    reg_type=self.reg_type,
                    l1_ratio=self.l1_ratio,
                    delta=self.delta,
                )
                self.W -= lr * dW
                self.b -= lr * db
                total += value * len(batch)
            self.loss_history.append(total / n)
            lr *= self.lr_decay
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Scores ``(N, D) -> (N, C)`` (``(N, 1)`` for a binary logistic classifier)."""
        return np.asarray(X, dtype=np.float64) @ self.W + self.b

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted labels ``(N, D) -> (N,)`` in the label values given to ``fit``."""
        scores = self.decision_function(X)
        if scores.shape[1] == 1:
            return self.classes_[(scores[:, 0] > 0).astype(np.int64)]
        return self.classes_[scores.argmax(axis=1)]

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        """Accuracy on ``X (N, D)``, ``y (N,)``."""
        return float((self.predict(X) == np.asarray(y)).mean())
