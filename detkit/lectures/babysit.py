"""Babysitting the learning process, CS231n lecture 6: sanity checks before a long run.

1. :func:`initial_loss_check`: with small random weights all class scores are
   about equal, so the softmax loss must start near ``log(C)`` (2.303 for 10
   classes). Much higher means the initial scores are too large (init scale
   too big); much lower means a bug (e.g. labels leaking into inputs).
2. :func:`overfit_small_subset`: a model that cannot reach ~zero loss on ~20
   examples without regularisation has a bug, or far too low a learning rate.
3. :func:`lr_range_test`: raise the lr geometrically over a few hundred steps
   and watch the loss: it barely moves while lr is too small, falls fastest in
   the useful range, and explodes when lr is too large. The suggestion is the
   lr of steepest descent, safely below the explosion.

Data are ``(x, y)`` batches of inputs and int64 class labels ``(N,)``; models map
``x`` to class scores ``(N, C)`` unless another ``loss_fn`` says otherwise.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from detkit.lectures.optim import ScratchAdam, ScratchSGD

__all__ = [
    "InitialLossReport",
    "LRRangeResult",
    "initial_loss_check",
    "lr_range_test",
    "overfit_small_subset",
]

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


class InitialLossReport(NamedTuple):
    """Mean loss at initialisation, the expected ``log(num_classes)``, and whether they agree."""

    loss: float
    expected: float
    ok: bool


def _as_batches(data: Batch | Iterable[Batch]) -> Iterable[Batch]:
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor) and isinstance(data[1], Tensor):
        return [(data[0], data[1])]  # a single (x, y) batch
    return data  # type: ignore[return-value]


def initial_loss_check(
    model: nn.Module,
    data: Batch | Iterable[Batch],
    num_classes: int,
    *,
    loss_fn: LossFn = F.cross_entropy,
    rtol: float = 0.1,
    max_batches: int | None = None,
) -> InitialLossReport:
    """Average ``loss_fn`` of the untrained ``model`` over a batch or a loader, against ``log(num_classes)``.

    ``ok`` if within ``rtol`` (relative) of ``log(num_classes)``. Runs without
    gradients, in eval mode (no dropout noise, no batch-norm statistics updates);
    the model's mode is restored. Add no regularisation loss here: it raises
    the initial loss, which is the next sanity check.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for i, (x, y) in enumerate(_as_batches(data)):
                if max_batches is not None and i >= max_batches:
                    break
                total += float(loss_fn(model(x), y)) * len(y)  # per-batch mean -> sum over examples
                count += len(y)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no examples to compute the initial loss on")
    loss = total / count
    expected = math.log(num_classes)
    return InitialLossReport(loss, expected, abs(loss - expected) <= rtol * expected)


def overfit_small_subset(
    model: nn.Module,
    batch: Batch,
    steps: int,
    *,
    lr: float = 1e-3,
    optimizer: Optimizer | None = None,
    loss_fn: LossFn = F.cross_entropy,
) -> list[float]:
    """Train ``model`` on one small ``(x, y)`` batch for ``steps`` full-batch steps; return the loss curve.

    Use ~20 examples and no regularisation: the training loss should go to ~0 and
    the accuracy to 100%. ``optimizer`` defaults to Adam with ``lr``.
    """
    x, y = batch
    opt = optimizer if optimizer is not None else ScratchAdam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


class LRRangeResult(NamedTuple):
    """Learning rates tried, the raw loss at each, and the suggested learning rate."""

    lrs: list[float]
    losses: list[float]
    suggested_lr: float


def _cycle(batches: Iterable[Batch]) -> Iterator[Batch]:
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("no batches for the lr range test")


def _suggest(lrs: list[float], smoothed: list[float]) -> float:
    """The lr where the smoothed loss falls fastest per unit of ``log(lr)``, before its minimum."""
    best = min(range(len(smoothed)), key=smoothed.__getitem__)
    if best < 2:  # the loss never went down: nothing to learn from the slope
        return lrs[best] / 10.0
    slopes = [
        (smoothed[i + 1] - smoothed[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1])) for i in range(1, best)
    ]
    return lrs[1 + min(range(len(slopes)), key=slopes.__getitem__)]


def lr_range_test(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Batch],
    lr_min: float = 1e-7,
    lr_max: float = 10.0,
    steps: int = 100,
    *,
    optimizer_fn: Callable[[Iterable[nn.Parameter], float], Optimizer] | None = None,
    smoothing: float = 0.8,
    divergence: float = 4.0,
    restore: bool = True,
) -> LRRangeResult:
    """Train with ``lr = lr_min * (lr_max / lr_min) ** (i / (steps - 1))`` at step ``i``; record the loss.

    Stops early once the loss is non-finite or ``divergence`` times its smoothed
    minimum. The suggestion uses an exponential moving average of the loss
    (``smoothing`` is its decay, bias-corrected, 0 for none) and picks the steepest
    descent per decade of lr before the minimum (the minimum itself is already
    too close to divergence). ``optimizer_fn(params, lr)`` defaults to plain SGD.
    With ``restore`` the model's weights are put back afterwards (the test wrecks them).
    Batches are cycled if fewer than ``steps``.
    """
    if not 0 < lr_min < lr_max:
        raise ValueError(f"need 0 < lr_min < lr_max, got {lr_min}, {lr_max}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    saved = copy.deepcopy(model.state_dict()) if restore else None
    make_opt = optimizer_fn if optimizer_fn is not None else (lambda params, lr: ScratchSGD(params, lr=lr))
    opt = make_opt(model.parameters(), lr_min)
    model.train()
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    avg = 0.0
    stream = _cycle(batches)
    for i in range(steps):
        lr = lr_min * (lr_max / lr_min) ** (i / (steps - 1))  # geometric: equal steps in log(lr)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = next(stream)
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        value = float(loss.detach())
        lrs.append(lr)
        losses.append(value)
        if not math.isfinite(value):
            break
        avg = smoothing * avg + (1 - smoothing) * value
        smoothed.append(avg / (1 - smoothing ** (i + 1)))  # bias correction, as in Adam
        if smoothed[-1] > divergence * min(smoothed):
            break
        loss.backward()
        opt.step()
    if saved is not None:
        model.load_state_dict(saved)
    return LRRangeResult(lrs, losses, _suggest(lrs[: len(smoothed)], smoothed))
