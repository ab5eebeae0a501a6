"""Learning-rate decay of CS231n lecture 7: step, exponential and cosine.

Each schedule comes twice: as a pure function ``lr(step)`` (for plotting and
reasoning) and as a factory returning a ``torch.optim.lr_scheduler.LambdaLR``
that applies it to every param group (relative to the group's initial lr).
``step`` counts scheduler steps from 0, the way ``scheduler.step()`` does
(usually one per epoch for step decay, one per iteration for cosine).

Why decay at all: with a fixed lr, SGD's noise keeps the weights bouncing around
a minimum; lowering lr late in training lets them settle (the loss curve's
"drop" at each step decay). Cosine decay gets there smoothly with one knob, the
length of training.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = [
    "cosine_decay",
    "cosine_decay_scheduler",
    "exponential_decay",
    "exponential_decay_scheduler",
    "step_decay",
    "step_decay_scheduler",
]


def step_decay(step: int, base_lr: float, step_size: int, gamma: float = 0.1) -> float:
    """``base_lr * gamma ** (step // step_size)``: multiply by ``gamma`` every ``step_size`` steps."""
    if step_size <= 0:
        raise ValueError(f"step_size must be positive, got {step_size}")
    return base_lr * gamma ** (step // step_size)


def exponential_decay(step: int, base_lr: float, gamma: float) -> float:
    """``base_lr * gamma ** step`` (the notes' ``a0 * exp(-k t)`` with ``gamma = e^-k``)."""
    return base_lr * gamma**step


def cosine_decay(step: int, base_lr: float, total_steps: int, min_lr: float = 0.0) -> float:
    """``min_lr + (base_lr - min_lr) * (1 + cos(pi * step / total_steps)) / 2``.

    Goes from ``base_lr`` at step 0 to ``min_lr`` at ``total_steps`` (past it the
    cosine rises again, as torch's ``CosineAnnealingLR`` does; stop training there).
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    return min_lr + (base_lr - min_lr) * (1.0 + math.cos(math.pi * step / total_steps)) / 2.0


def _base_lrs(optimizer: Optimizer) -> list[float]:
    # LambdaLR multiplies each group's initial lr; remember it the same way torch's schedulers do.
    return [float(group.setdefault("initial_lr", group["lr"])) for group in optimizer.param_groups]


def step_decay_scheduler(optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> LambdaLR:
    """A ``LambdaLR`` applying :func:`step_decay` (the sequence of ``StepLR``)."""
    return LambdaLR(optimizer, lambda step: step_decay(step, 1.0, step_size, gamma))


def exponential_decay_scheduler(optimizer: Optimizer, gamma: float) -> LambdaLR:
    """A ``LambdaLR`` applying :func:`exponential_decay` (the sequence of ``ExponentialLR``)."""
    return LambdaLR(optimizer, lambda step: exponential_decay(step, 1.0, gamma))


def cosine_decay_scheduler(optimizer: Optimizer, total_steps: int, min_lr: float = 0.0) -> LambdaLR:
    """A ``LambdaLR`` applying :func:`cosine_decay` to each group (the sequence of ``CosineAnnealingLR``).

    ``min_lr`` is absolute, like ``CosineAnnealingLR``'s ``eta_min``, so each group's
    factor is its cosine lr divided by its own base lr.
    """

    def factor(base_lr: float) -> Callable[[int], float]:
        if base_lr == 0:  # a frozen group (lr 0) stays frozen
            return lambda step: 0.0
        return lambda step: cosine_decay(step, base_lr, total_steps, min_lr) / base_lr

    return LambdaLR(optimizer, [factor(lr) for lr in _base_lrs(optimizer)])
