"""Random hyperparameter search of CS231n lecture 6, sampling scale parameters in log space.

Why random rather than grid (Bergstra & Bengio 2012): usually only a few
hyperparameters matter. ``n`` random trials try ``n`` distinct values of each of
them, a grid only ``n^(1/d)`` in ``d`` dimensions. Why log space: learning
rates and regularisation strengths act multiplicatively, so ``1e-4..1e-3``
deserves as many trials as ``1e-2..1e-1``; a uniform draw on ``[1e-4, 1e-1]``
would put 90% of its trials in the top decade.

A search space maps names to ``(low, high, kind)``: ``"log"`` draws
``exp(U(log low, log high))``, ``"linear"`` ``U(low, high)``, ``"int"`` an integer
in ``[low, high]`` inclusive. Start coarse (a few epochs per trial, wide ranges),
then narrow the ranges around the best trials; a best value at the edge of a
range means the range should move.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple

__all__ = ["SearchSpace", "Trial", "random_search", "sample_params"]

Kind = Literal["log", "linear", "int"]
SearchSpace = Mapping[str, tuple[float, float, Kind]]


class Trial(NamedTuple):
    """One evaluated point: its hyperparameters and the score ``trial_fn`` returned."""

    params: dict[str, float]
    score: float


def _validate(space: SearchSpace) -> None:
    for name, spec in space.items():
        if len(spec) != 3:
            raise ValueError(f"search space entry {name!r} must be (low, high, kind), got {spec!r}")
        low, high, kind = spec
        if kind not in ("log", "linear", "int"):
            raise ValueError(f"search space entry {name!r}: kind must be 'log', 'linear' or 'int', got {kind!r}")
        if not low <= high:
            raise ValueError(f"search space entry {name!r}: low {low} > high {high}")
        if kind == "log" and low <= 0:
            raise ValueError(f"search space entry {name!r}: a log range needs low > 0, got {low}")


def sample_params(space: SearchSpace, rng: random.Random) -> dict[str, float]:
    """One random point of ``space`` (see the module docstring for the kinds)."""
    _validate(space)
    params: dict[str, float] = {}
    for name, (low, high, kind) in space.items():
        if kind == "log":
            params[name] = math.exp(rng.uniform(math.log(low), math.log(high)))
        elif kind == "linear":
            params[name] = rng.uniform(low, high)
        else:
            params[name] = rng.randint(math.ceil(low), math.floor(high))
    return params


def random_search(
    space: SearchSpace,
    trial_fn: Callable[[dict[str, float]], float],
    n_trials: int,
    seed: int = 0,
    *,
    minimize: bool = True,
) -> list[Trial]:
    """Evaluate ``trial_fn`` (e.g. validation loss after a short training) at ``n_trials`` random points.

    Returns all trials sorted best first (lowest score if ``minimize``, else
    highest); non-finite scores (a diverged run) sort last. ``seed`` makes the
    sampled points reproducible.
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    _validate(space)
    rng = random.Random(seed)
    trials = []
    for _ in range(n_trials):
        params = sample_params(space, rng)
        trials.append(Trial(params, float(trial_fn(dict(params)))))
    sign = 1.0 if minimize else -1.0
    return sorted(trials, key=lambda t: (not math.isfinite(t.score), sign * t.score if math.isfinite(t.score) else 0.0))
