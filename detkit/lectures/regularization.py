"""Regularisation of CS231n lecture 7: inverted dropout, DropConnect, L2 penalty.

Dropout zeroes each activation with probability ``p`` at training time. The
"inverted" form divides the survivors by ``1 - p`` during training, so that the
expected activation is unchanged and the test-time forward pass is the plain
network (no rescaling to remember at inference, which the notes' first,
non-inverted version needs).

DropConnect (Wan et al. 2013) drops *weights* instead of activations: a Linear
layer uses ``W * M / (1 - p)`` with a Bernoulli mask ``M`` on ``W``. Here one mask
is drawn per forward call (shared by the batch) and test time uses the full
``W``, the inverted-scaling analogue of dropout; the paper draws one mask per
example and approximates test-time averaging with a Gaussian, both costlier.

Shapes: dropout is elementwise ``(*) -> (*)``; DropConnect maps ``(N, in) -> (N, out)``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DropConnectLinear", "ScratchDropout", "l2_penalty", "scratch_dropout"]


def _check_p(p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop probability must be in [0, 1], got {p}")


def _keep_mask(shape: torch.Size, p: float, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Scaled keep mask: ``1 / (1 - p)`` with probability ``1 - p``, else 0."""
    if p == 1.0:
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    keep = torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device) >= p
    return keep.to(like.dtype) / (1.0 - p)


def scratch_dropout(
    x: Tensor, p: float = 0.5, *, training: bool = True, generator: torch.Generator | None = None
) -> Tensor:
    """Inverted dropout: ``x * mask / (1 - p)`` in training, ``x`` otherwise; ``(*) -> (*)``.

    ``E[output] = x`` for any ``p < 1``: survivors are scaled up by ``1 / (1 - p)``.
    The same mask (scaled) is the local gradient.
    """
    _check_p(p)
    if not training or p == 0.0:
        return x
    return x * _keep_mask(x.shape, p, x, generator)


class ScratchDropout(nn.Module):
    """Module form of :func:`scratch_dropout`; active only in ``train()`` mode."""

    def __init__(self, p: float = 0.5, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        _check_p(p)
        self.p = p
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        """``(*) -> (*)``."""
        return scratch_dropout(x, self.p, training=self.training, generator=self.generator)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class DropConnectLinear(nn.Linear):
    """``nn.Linear`` whose weights (not biases) are dropped with probability ``p`` in training.

    Training: ``y = x (W * M / (1 - p))^T + b``, one Bernoulli keep-mask ``M`` of shape
    ``(out, in)`` per call, drawn from ``generator``. Eval: ``y = x W^T + b``.
    A state dict of ``nn.Linear`` loads as is.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        p: float = 0.5,
        *,
        bias: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        _check_p(p)
        self.p = p
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_features) -> (N, out_features)``."""
        if not self.training or self.p == 0.0:
            return F.linear(x, self.weight, self.bias)
        mask = _keep_mask(self.weight.shape, self.p, self.weight, self.generator)
        # Dropped weights get no gradient this step: d y / d W is masked the same way.
        return F.linear(x, self.weight * mask, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}"


def l2_penalty(params: Iterable[Tensor], strength: float) -> Tensor:
    """``strength / 2 * sum ||w||^2`` over ``params``; its gradient ``strength * w`` is SGD's weight decay.

    Usually applied to weights only: penalising biases and norm parameters
    does not reduce capacity in a useful way.
    """
    total = sum(w.pow(2).sum() for w in params)
    if not isinstance(total, Tensor):  # no parameters
        return torch.zeros(())
    return 0.5 * strength * total
