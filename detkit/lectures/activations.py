"""Activation functions of CS231n lecture 6, with hand-written backward passes.

Each elementwise activation is a ``torch.autograd.Function`` whose ``backward``
is the local derivative times the upstream gradient, so the lecture's question
"what does this gate do to the gradient?" is answered by reading one line:

- sigmoid: ``s (1 - s)``, at most 1/4 and ~0 when saturated -> kills gradients;
- tanh: ``1 - t^2``, zero-centred but still saturates;
- ReLU: passes the gradient where the input was positive, else 0 ("dead" units);
- leaky ReLU / PReLU: a small slope ``a`` on the negative side, never exactly 0;
- ELU: smooth negative side ``alpha (e^x - 1)`` with derivative ``out + alpha``.

Maxout takes the max of ``k`` affine maps; it generalises ReLU (``max(0, w^T x)``)
and leaky ReLU and never saturates, at ``k`` times the parameters.

Conventions at the kink ``x = 0`` follow torch: ReLU's derivative there is 0,
leaky ReLU's and ELU's are the negative-side ones.

Shapes: activations are elementwise, ``(*) -> (*)``; PReLU's slope broadcasts
over dim 1 (channels) like ``torch.nn.PReLU``; Maxout maps ``(N, D_in) -> (N, D_out)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

__all__ = [
    "Maxout",
    "ScratchELU",
    "ScratchLeakyReLU",
    "ScratchPReLU",
    "ScratchReLU",
    "ScratchSigmoid",
    "ScratchTanh",
    "maxout",
    "scratch_elu",
    "scratch_leaky_relu",
    "scratch_prelu",
    "scratch_relu",
    "scratch_sigmoid",
    "scratch_tanh",
]


class _Sigmoid(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor) -> Tensor:  # type: ignore[override]
        # exp(-|x|) never overflows: use 1 / (1 + e^-x) for x >= 0 and e^x / (1 + e^x) below.
        z = torch.exp(-x.abs())
        out = torch.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tensor:  # type: ignore[override]
        (s,) = ctx.saved_tensors
        return grad_out * s * (1.0 - s)  # local gradient s(1-s) <= 1/4: each sigmoid shrinks the signal


class _Tanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor) -> Tensor:  # type: ignore[override]
        # tanh(x) = sign(x) (1 - e^{-2|x|}) / (1 + e^{-2|x|}); expm1 keeps precision near 0.
        z = torch.exp(-2.0 * x.abs())
        out = torch.sign(x) * (-torch.expm1(-2.0 * x.abs())) / (1.0 + z)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tensor:  # type: ignore[override]
        (t,) = ctx.saved_tensors
        return grad_out * (1.0 - t * t)


class _ReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor) -> Tensor:  # type: ignore[override]
        positive = x > 0
        ctx.save_for_backward(positive)
        return torch.where(positive, x, torch.zeros_like(x))

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tensor:  # type: ignore[override]
        (positive,) = ctx.saved_tensors
        # The gate routes the gradient: a unit that is never positive never learns (dead ReLU).
        return grad_out * positive.to(grad_out.dtype)


class _LeakyReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, negative_slope: float) -> Tensor:  # type: ignore[override]
        positive = x > 0
        ctx.save_for_backward(positive)
        ctx.negative_slope = negative_slope  # type: ignore[attr-defined]
        return torch.where(positive, x, x * negative_slope)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (positive,) = ctx.saved_tensors
        return torch.where(positive, grad_out, grad_out * ctx.negative_slope), None


class _PReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor) -> Tensor:  # type: ignore[override]
        slope = _broadcast_slope(weight, x)
        ctx.save_for_backward(x, weight)
        return torch.where(x > 0, x, x * slope)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        slope = _broadcast_slope(weight, x)
        positive = x > 0
        grad_x = torch.where(positive, grad_out, grad_out * slope)
        # d out / d a = x on the negative side; the slope is shared, so sum over every other position.
        grad_slope_full = torch.where(positive, torch.zeros_like(x), grad_out * x)
        if weight.numel() == 1:
            grad_w = grad_slope_full.sum().reshape(weight.shape)
        else:
            dims = [d for d in range(x.dim()) if d != 1]
            grad_w = grad_slope_full.sum(dim=dims).reshape(weight.shape)
        return grad_x, grad_w


class _ELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, alpha: float) -> Tensor:  # type: ignore[override]
        positive = x > 0
        # expm1 on the clamped input: accurate near 0 and no overflow for large positive x.
        out = torch.where(positive, x, alpha * torch.expm1(x.clamp(max=0)))
        ctx.save_for_backward(positive, out)
        ctx.alpha = alpha  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        positive, out = ctx.saved_tensors
        # d/dx alpha (e^x - 1) = alpha e^x = out + alpha: reuse the output, no second exp.
        return torch.where(positive, grad_out, grad_out * (out + ctx.alpha)), None


def _broadcast_slope(weight: Tensor, x: Tensor) -> Tensor:
    """PReLU slopes ``(1,)`` or ``(C,)`` shaped to broadcast over ``x``'s dim 1."""
    if weight.numel() == 1:
        return weight.reshape(())
    if x.dim() < 2 or x.shape[1] != weight.numel():
        raise ValueError(f"PReLU has {weight.numel()} slopes but the input {tuple(x.shape)} has no matching dim 1")
    return weight.reshape((1, -1) + (1,) * (x.dim() - 2))


def scratch_sigmoid(x: Tensor) -> Tensor:
    """``1 / (1 + e^-x)``, elementwise ``(*) -> (*)``, numerically stable for large ``|x|``."""
    out: Tensor = _Sigmoid.apply(x)
    return out


def scratch_tanh(x: Tensor) -> Tensor:
    """Hyperbolic tangent ``(e^x - e^-x) / (e^x + e^-x) = 2 sigmoid(2x) - 1``, ``(*) -> (*)``."""
    out: Tensor = _Tanh.apply(x)
    return out


def scratch_relu(x: Tensor) -> Tensor:
    """``max(0, x)``, ``(*) -> (*)``; gradient 0 at ``x = 0`` like torch."""
    out: Tensor = _ReLU.apply(x)
    return out


def scratch_leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    """``x`` for ``x > 0`` else ``negative_slope * x``, ``(*) -> (*)``."""
    out: Tensor = _LeakyReLU.apply(x, negative_slope)
    return out


def scratch_prelu(x: Tensor, weight: Tensor) -> Tensor:
    """Parametric ReLU: leaky ReLU whose slope ``weight`` (``(1,)`` or ``(C,)``, on dim 1) is learned."""
    out: Tensor = _PReLU.apply(x, weight)
    return out


def scratch_elu(x: Tensor, alpha: float = 1.0) -> Tensor:
    """Exponential linear unit: ``x`` for ``x > 0`` else ``alpha (e^x - 1)``, ``(*) -> (*)``."""
    out: Tensor = _ELU.apply(x, alpha)
    return out


def maxout(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Maxout over ``k`` affine pieces: ``out[n, j] = max_p (W[j, p] . x[n] + b[j, p])``.

    ``x``: ``(N, D_in)``; ``weight``: ``(D_out, k, D_in)``; ``bias``: ``(D_out, k)`` or None.
    Returns ``(N, D_out)``. The gradient flows only into the winning piece.
    """
    d_out, k, d_in = weight.shape
    z = x @ weight.reshape(d_out * k, d_in).T  # (N, D_in) -> (N, D_out * k)
    if bias is not None:
        z = z + bias.reshape(d_out * k)
    return z.reshape(x.shape[0], d_out, k).amax(dim=2)  # (N, D_out * k) -> (N, D_out, k) -> (N, D_out)


class ScratchSigmoid(nn.Module):
    """Module form of :func:`scratch_sigmoid`."""

    def forward(self, x: Tensor) -> Tensor:
        """``(*) -> (*)``."""
        return scratch_sigmoid(x)


class ScratchTanh(nn.Module):
    """Module form of :func:`scratch_tanh`."""

    def forward(self, x: Tensor) -> Tensor:
        """``(*) -> (*)``."""
        return scratch_tanh(x)


class ScratchReLU(nn.Module):
    """Module form of :func:`scratch_relu`."""

    def forward(self, x: Tensor) -> Tensor:
        """``(*) -> (*)``."""
        return scratch_relu(x)


class ScratchLeakyReLU(nn.Module):
    """Module form of :func:`scratch_leaky_relu` with a fixed ``negative_slope``."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: Tensor) -> Tensor:
        """``(*) -> (*)``."""
        return scratch_leaky_relu(x, self.negative_slope)


class ScratchPReLU(nn.Module):
    """Leaky ReLU with a learnable slope (He et al. 2015), one per channel or one shared.

    ``weight``: ``(num_parameters,)``, initialised to ``init`` (0.25 like the paper
    and torch); it is named ``weight`` so a ``torch.nn.PReLU`` state dict loads as is.
    Input ``(N, C, *)`` with ``C == num_parameters`` (or any shape if 1).
    """

    def __init__(self, num_parameters: int = 1, init: float = 0.25) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((num_parameters,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, *) -> (N, C, *)``."""
        return scratch_prelu(x, self.weight)


class ScratchELU(nn.Module):
    """Module form of :func:`scratch_elu`."""

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        """``(*) -> (*)``."""
        return scratch_elu(x, self.alpha)


class Maxout(nn.Module):
    """Maxout layer (Goodfellow et al. 2013): ``k`` affine maps, elementwise max.

    ``weight``: ``(out_features, pieces, in_features)``; ``bias``: ``(out_features, pieces)``.
    Initialised like ``nn.Linear`` (uniform in ``±1/sqrt(in_features)``).
    """

    def __init__(self, in_features: int, out_features: int, pieces: int = 2, *, bias: bool = True) -> None:
        super().__init__()
        if pieces < 1:
            raise ValueError(f"Maxout needs at least one piece, got pieces={pieces}")
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(out_features, pieces, in_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features, pieces).uniform_(-bound, bound)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_features) -> (N, out_features)``."""
        return maxout(x, self.weight, self.bias)
