"""Model ensembles of CS231n lecture 7: averaged softmax, and snapshot ensembles.

An ensemble of independently trained models averages their predicted class
*probabilities* (not their raw scores, whose scales differ between models);
it typically buys a couple of percent at test time. Snapshot ensembles
(Huang et al. 2017) get several models for the price of one training run: a
cyclic cosine schedule anneals the lr to ~0 ``num_cycles`` times, and the
weights at the end of every cycle (a different local minimum each time) are
saved as one ensemble member.

Shapes: ``N`` examples, ``K`` classes; models map ``(N, ...) -> (N, K)`` scores.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from detkit.lectures.optim import SGDMomentum

__all__ = [
    "Ensemble",
    "SnapshotResult",
    "cyclic_cosine_lr",
    "ensemble_predict",
    "snapshot_models",
    "train_snapshot_ensemble",
]


def ensemble_predict(models: Iterable[nn.Module], x: Tensor) -> Tensor:
    """Average of the models' softmax probabilities: ``(N, ...) -> (N, K)``."""
    probs = [torch.softmax(model(x), dim=1) for model in models]
    if not probs:
        raise ValueError("an ensemble needs at least one model")
    return torch.stack(probs).mean(dim=0)  # (M, N, K) -> (N, K)


class Ensemble(nn.Module):
    """Several classifiers as one module whose ``forward`` returns averaged probabilities ``(N, K)``."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.models = nn.ModuleList(models)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, ...) -> (N, K)`` probabilities (each row sums to 1)."""
        return ensemble_predict(self.models, x)


def cyclic_cosine_lr(step: int, base_lr: float, cycle_length: int, min_lr: float = 0.0) -> float:
    """Cosine annealing restarted every ``cycle_length`` steps (SGDR with fixed cycles).

    ``min_lr + (base_lr - min_lr) * (1 + cos(pi * (step mod L) / L)) / 2``; the same
    sequence as ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(T_0=L)``.
    """
    if cycle_length <= 0:
        raise ValueError(f"cycle_length must be positive, got {cycle_length}")
    t = step % cycle_length
    return min_lr + (base_lr - min_lr) * (1.0 + math.cos(math.pi * t / cycle_length)) / 2.0


class SnapshotResult(NamedTuple):
    """What :func:`train_snapshot_ensemble` recorded.

    ``snapshots``: one state dict per cycle (cloned tensors); ``snapshot_steps``: the
    0-based step after whose update each was taken; ``lrs`` and ``losses``: per step.
    """

    snapshots: list[dict[str, Tensor]]
    snapshot_steps: list[int]
    lrs: list[float]
    losses: list[float]


def _forever(batches: Iterable[tuple[Tensor, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
    """Re-iterate ``batches`` (a list or a data loader) as long as needed."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("no batches to train on (an exhausted iterator cannot be cycled; pass a list or loader)")


def train_snapshot_ensemble(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    num_cycles: int,
    cycle_length: int,
    base_lr: float,
    min_lr: float = 0.0,
    optimizer: Optimizer | None = None,
) -> SnapshotResult:
    """Train ``model`` for ``num_cycles * cycle_length`` steps on ``(x, y)`` batches, snapshotting each cycle.

    Step ``s`` (0-based) uses lr :func:`cyclic_cosine_lr` ``(s)``; the snapshot of
    cycle ``k`` is taken after step ``(k + 1) * cycle_length - 1``, where the lr is
    lowest and the model has settled into a minimum. The next step's lr jumps back
    to ``base_lr``, kicking the weights out towards another minimum.
    ``optimizer`` defaults to SGD with momentum 0.9; its lr is overwritten per step.
    """
    if num_cycles <= 0:
        raise ValueError(f"num_cycles must be positive, got {num_cycles}")
    opt = optimizer if optimizer is not None else SGDMomentum(model.parameters(), lr=base_lr)
    model.train()
    result = SnapshotResult([], [], [], [])
    stream = _forever(batches)
    for step in range(num_cycles * cycle_length):
        lr = cyclic_cosine_lr(step, base_lr, cycle_length, min_lr)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = next(stream)
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        result.lrs.append(lr)
        result.losses.append(float(loss.detach()))
        if (step + 1) % cycle_length == 0:  # end of a cycle: lr ~ min_lr, take the snapshot
            result.snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            result.snapshot_steps.append(step)
    return result


def snapshot_models(model: nn.Module, snapshots: Iterable[dict[str, Tensor]]) -> list[nn.Module]:
    """Copies of ``model`` loaded with each snapshot, in eval mode (wrap them in :class:`Ensemble`)."""
    members = []
    for state in snapshots:
        member = copy.deepcopy(model)
        member.load_state_dict(state)
        members.append(member.eval())
    return members
