"""Batch normalisation (Ioffe & Szegedy 2015) with a hand-derived backward pass.

Shapes: ``N`` batch, ``C`` features/channels, ``*`` optional spatial dims
(``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)``). Statistics are per channel, taken
over every dim except 1, so ``m = N * prod(*)`` values feed each mean.

Training: ``xhat = (x - mean) / sqrt(var + eps)`` with the *biased* batch
variance, ``y = gamma * xhat + beta``. Running estimates for evaluation follow
torch: ``running = (1 - momentum) * running + momentum * batch_stat`` (note torch's
``momentum`` is the weight of the *new* value, the opposite of an EMA "decay"),
and the running variance uses the *unbiased* batch variance ``var * m / (m - 1)``.
``momentum=None`` gives the cumulative average over all batches seen.
Evaluation uses the running estimates, so the layer becomes a fixed affine map.

Backward (per channel, sums over the ``m`` positions), from the chain rule
through mean and variance::

    dbeta  = sum(dy)
    dgamma = sum(dy * xhat)
    dx     = gamma * invstd / m * (m * dy - sum(dy) - xhat * sum(dy * xhat))

The two subtracted terms are the gradient's paths through the batch mean and
variance: every example's output depends on every other example in the batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

__all__ = ["BatchNorm", "ScratchBatchNorm1d", "ScratchBatchNorm2d", "scratch_batch_norm"]


def _reduce_dims(x: Tensor) -> list[int]:
    """Every dim but the channel dim 1."""
    return [0, *range(2, x.dim())]


def _per_channel(v: Tensor, x: Tensor) -> Tensor:
    """``(C,)`` -> ``(1, C, 1, ...)`` broadcastable against ``x``."""
    return v.reshape((1, -1) + (1,) * (x.dim() - 2))


class _BatchNormTrain(torch.autograd.Function):
    """Training-mode batch norm with the closed-form backward above."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, x: Tensor, gamma: Tensor, beta: Tensor, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        dims = _reduce_dims(x)
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)  # biased: normalise by the batch's own spread
        invstd = torch.rsqrt(var + eps)
        xhat = (x - _per_channel(mean, x)) * _per_channel(invstd, x)
        ctx.save_for_backward(xhat, gamma, invstd)
        ctx.mark_non_differentiable(mean, var)
        return xhat * _per_channel(gamma, x) + _per_channel(beta, x), mean, var

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, dy: Tensor, _dmean: Tensor | None, _dvar: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, None]:
        xhat, gamma, invstd = ctx.saved_tensors
        dims = _reduce_dims(dy)
        m = dy.numel() // dy.shape[1]
        dbeta = dy.sum(dim=dims)
        dgamma = (dy * xhat).sum(dim=dims)
        # (m dy - sum dy - xhat sum(dy xhat)) * gamma invstd / m: the direct path minus the mean and variance paths.
        dx = (m * dy - _per_channel(dbeta, dy) - xhat * _per_channel(dgamma, dy)) * _per_channel(gamma * invstd / m, dy)
        return dx, dgamma, dbeta, None


def scratch_batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch norm of ``x`` ``(N, C, *)`` -> ``(N, C, *)``.

    ``weight`` (gamma) and ``bias`` (beta): ``(C,)`` or None (1 and 0). In training
    mode the batch statistics normalise ``x`` and, if given, ``running_mean`` /
    ``running_var`` ``(C,)`` are updated in place with ``momentum``. Otherwise the
    running estimates normalise ``x``.
    """
    c = x.shape[1]
    gamma = weight if weight is not None else torch.ones(c, dtype=x.dtype, device=x.device)
    beta = bias if bias is not None else torch.zeros(c, dtype=x.dtype, device=x.device)
    if training:
        m = x.numel() // c
        if m < 2:
            raise ValueError(f"batch norm in training needs more than 1 value per channel, got input {tuple(x.shape)}")
        y, mean, var = _BatchNormTrain.apply(x, gamma, beta, eps)
        with torch.no_grad():
            if running_mean is not None:
                running_mean.mul_(1.0 - momentum).add_(mean, alpha=momentum)
            if running_var is not None:
                # The running estimate targets the population variance: use the unbiased m / (m - 1) form.
                running_var.mul_(1.0 - momentum).add_(var * (m / (m - 1)), alpha=momentum)
        out: Tensor = y
        return out
    if running_mean is None or running_var is None:
        raise ValueError("batch norm in eval mode needs running_mean and running_var")
    invstd = torch.rsqrt(running_var + eps)
    # Fixed statistics: a per-channel affine map; autograd's gradient is simply dy * gamma * invstd.
    return (x - _per_channel(running_mean, x)) * _per_channel(invstd * gamma, x) + _per_channel(beta, x)


class BatchNorm(nn.Module):
    """Batch norm over dim 1 of an ``(N, C, *)`` input, state-dict compatible with ``torch.nn.BatchNormNd``.

    Parameters ``weight`` (gamma, init 1) and ``bias`` (beta, init 0), ``(C,)``;
    buffers ``running_mean`` (init 0), ``running_var`` (init 1), ``num_batches_tracked``.
    ``momentum=None`` switches the running estimates to a cumulative average.
    """

    #: Accepted input ranks; subclasses narrow it.
    input_dims: tuple[int, ...] = (2, 3, 4, 5)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        *,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.running_mean: Tensor | None
        self.running_var: Tensor | None
        self.num_batches_tracked: Tensor | None
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, *) -> (N, C, *)``."""
        if x.dim() not in self.input_dims or x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) expects a {self.input_dims}-dim input with "
                f"{self.num_features} channels in dim 1, got {tuple(x.shape)}"
            )
        # Without running estimates the layer always normalises with batch statistics (like torch).
        use_batch_stats = self.training or self.running_mean is None
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average: the k-th batch gets weight 1/k
                momentum = 1.0 / float(self.num_batches_tracked.item())
        return scratch_batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=use_batch_stats,
            momentum=momentum,
            eps=self.eps,
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class ScratchBatchNorm1d(BatchNorm):
    """Batch norm of ``(N, C)`` or ``(N, C, L)`` inputs."""

    input_dims = (2, 3)


class ScratchBatchNorm2d(BatchNorm):
    """Batch norm of ``(N, C, H, W)`` inputs (spatial batch norm: statistics over N, H and W)."""

    input_dims = (4,)
